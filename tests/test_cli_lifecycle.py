"""`hpo enqueue|extend|resume|clone` (service/cli/lifecycle.py), run through typer's CliRunner
against a real `hpo serve`. Trials are claimed and finished over the worker protocol by the test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo_client import Client
from service.cli.lifecycle import parse_scalar
from tests.conftest import LiveServer, digits_definition
from tests.test_cli_studies import flags, hpo, isolated  # noqa: F401 - the fixtures, reused
from tests.test_sdk_client import claim, run_trial, small
from tests.test_sdk_lifecycle import budget_of


@pytest.fixture
def sdk(live_server: LiveServer, flags: tuple[str, ...]) -> Any:
    """A client with the token the commands get (`flags` ends with it)."""
    with Client(live_server.url, flags[-1]) as c:
        yield c


@pytest.fixture
def worker(live_server: LiveServer, flags: tuple[str, ...]) -> Any:
    with live_server.client(flags[-1]) as w:
        yield w


def test_enqueue(sdk: Client, worker: Any, flags: tuple[str, ...], tmp_path: Path) -> None:
    sdk.submit(small("warm"))
    listed = tmp_path / "trials.yaml"
    listed.write_text(yaml.safe_dump([{"optimizer": "sgd", "batch_size": 32}, {"dropout": 0.3}]))
    result = hpo("enqueue", "warm", "--params", '{"lr": 0.01, "optimizer": "adam"}', "--file", str(listed), *flags)
    assert result.exit_code == 0, result.output
    assert "queued 3 trials in study warm: #0, #1, #2" in result.stdout
    first, second, third = (claim(worker, "warm") for _ in range(3))
    assert (first["params"]["lr"], first["params"]["optimizer"]) == (0.01, "adam")
    assert (second["params"]["optimizer"], second["params"]["batch_size"], third["params"]["dropout"]) == ("sgd", 32, 0.3)


def test_enqueue_refusals(sdk: Client, flags: tuple[str, ...], tmp_path: Path) -> None:
    sdk.submit(small("strict"))
    refused = hpo("enqueue", "strict", "--params", '{"learning_rate": 0.1}', *flags)
    assert refused.exit_code == 1 and refused.stdout == ""
    assert "trials.0.params.learning_rate" in refused.stderr and "HTTP 422" in refused.stderr
    not_json = hpo("enqueue", "strict", "--params", "lr=0.1", *flags)
    assert not_json.exit_code == 2 and "--params #1: not valid JSON" in not_json.stderr
    (tmp_path / "one.json").write_text(json.dumps({"trials": "x"}))
    wrong = hpo("enqueue", "strict", "--file", str(tmp_path / "one.json"), *flags)
    assert wrong.exit_code == 1 and "trials.0.params.trials" in wrong.stderr  # a mapping is one trial's params
    assert hpo("enqueue", "strict", *flags).exit_code == 2
    assert sdk.trials("strict") == []


def test_extend(sdk: Client, worker: Any, flags: tuple[str, ...]) -> None:
    sdk.submit(digits_definition("once", budget={"n_trials": 1, "max_concurrent": 1}))
    run_trial(worker, "once", [0.9, 0.5])
    assert sdk.study("once").state == "finished"

    added = hpo("extend", "once", "--add", "2", *flags)
    assert added.exit_code == 0, added.output
    assert "study once: n_trials 3, max_concurrent 1, max_retries 0; 1 finished; running" in added.stdout
    set_ = hpo("extend", "once", "--trials", "5", "--max-concurrent", "2", "--max-retries", "1", *flags)
    assert set_.exit_code == 0 and "n_trials 5, max_concurrent 2, max_retries 1" in set_.stdout
    assert budget_of(sdk.study("once")) == {"n_trials": 5, "max_concurrent": 2, "max_retries": 1}

    nothing = hpo("extend", "once", *flags)
    assert nothing.exit_code == 2 and "give at least one of --trials, --add" in nothing.stderr
    both = hpo("extend", "once", "--trials", "6", "--add", "1", *flags)
    assert both.exit_code == 2 and "not both" in both.stderr
    claim(worker, "once")
    lowered = hpo("extend", "once", "--trials", "1", "--max-concurrent", "3", *flags)  # 2 handed out already
    assert lowered.exit_code == 1 and "budget.n_trials" in lowered.stderr and "at least 2" in lowered.stderr
    assert "HTTP 422" in lowered.stderr
    assert sdk.study("once").definition["budget"]["max_concurrent"] == 2


def test_resume(sdk: Client, worker: Any, flags: tuple[str, ...]) -> None:
    sdk.submit(small("paused"))
    assert hpo("stop", "paused", *flags).exit_code == 0
    resumed = hpo("resume", "paused", "--trials", "6", *flags)
    assert resumed.exit_code == 0, resumed.output
    assert "study paused: n_trials 6, max_concurrent 4, max_retries 0; 0 finished; running" in resumed.stdout
    assert claim(worker, "paused")["number"] == 0
    ghost = hpo("resume", "ghost", *flags)
    assert ghost.exit_code == 1 and "no study named 'ghost'" in ghost.stderr


def test_clone(sdk: Client, worker: Any, flags: tuple[str, ...], team: str, tmp_path: Path) -> None:
    sdk.submit(small("source"))
    sdk.enqueue("source", [{"lr": 1e-4}, {"lr": 0.01}])
    run_trial(worker, "source", [1.0, 0.8])
    run_trial(worker, "source", [0.9, 0.4])
    changes = tmp_path / "changes.yaml"
    # A space entry in --changes is replaced whole: dropout's new range still holds the source's.
    dropout = {"type": "float", "low": 0.1, "high": 0.6}
    changes.write_text(yaml.safe_dump({"pruner": {"n_startup_trials": 3}, "space": {"dropout": dropout}}))

    result = hpo(
        "clone", "source", "narrow", "--set", "budget.n_trials=30", "--set", "space.lr.low=1e-3",
        "--set", "sampler.seed=7", "--changes", str(changes), "--carry", *flags,
    )
    assert result.exit_code == 0, result.output
    assert "cloned study source as narrow (30 trials, minimize)" in result.stdout
    assert f"optuna name: {team}/narrow" in result.stdout
    assert "carried 1 trials, left out 1" in result.stdout  # lr 1e-4 is below the new low
    definition, before = sdk.study("narrow").definition, sdk.study("source").definition
    assert definition["budget"]["n_trials"] == 30 and definition["sampler"] == {**before["sampler"], "seed": 7}
    assert definition["space"]["lr"] == {**before["space"]["lr"], "low": 1e-3}  # the rest of the entry kept
    assert {k: definition["space"]["dropout"][k] for k in dropout} == dropout
    assert definition["pruner"] == {**before["pruner"], "n_startup_trials": 3}
    assert [t.value for t in sdk.trials("narrow")] == [0.4]


def test_clone_refusals(sdk: Client, flags: tuple[str, ...]) -> None:
    sdk.submit(small("base"))
    bad = hpo("clone", "base", "copy", "--set", "space.lr.low=2.0", *flags)  # above its high, 1.0
    assert bad.exit_code == 1 and "space.lr" in bad.stderr and "HTTP 422" in bad.stderr
    no_value = hpo("clone", "base", "copy", "--set", "budget.n_trials", *flags)
    assert no_value.exit_code == 2 and "expected key.path=value" in no_value.stderr
    taken = hpo("clone", "base", "base", *flags)
    assert taken.exit_code == 1 and "already exists" in taken.stderr
    assert [s.name for s in sdk.studies()] == ["base"]


@pytest.mark.parametrize(
    ("text", "value"), [("30", 30), ("1e-3", 0.001), ("-2.5E+2", -250.0), ("true", True), ("adam", "adam"), ("null", None), ("[16, 32]", [16, 32])]
)
def test_a_set_value_is_read_as_yaml(text: str, value: Any) -> None:
    # The service takes "1e-3" for a float where its schema says float; elsewhere it would stay a string.
    assert parse_scalar(text) == value and type(parse_scalar(text)) is type(value)


@pytest.mark.parametrize("command", ["enqueue", "extend", "resume", "clone"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = hpo(command, "--help")
    assert result.exit_code == 0
    assert f"Example: hpo {command}" in result.stdout
    assert "--server" in result.stdout and "--token" in result.stdout
