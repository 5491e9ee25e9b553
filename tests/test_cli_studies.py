"""The study commands of `hpo` (service/cli/studies.py), run through typer's CliRunner against a
real `hpo serve`. Trials are driven over the worker protocol by the test (no torch)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from hpo_client.config import write_config
from service.cli import app
from tests.conftest import LiveServer, free_port
from tests.test_sdk_client import PNG_SIGNATURE, populate, small

runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing from the caller's environment or ~/.config: a config file path that does not exist."""
    for key in list(os.environ):
        if key.startswith("HPO_"):
            monkeypatch.delenv(key)
    config = tmp_path / "no-such-config.yaml"
    monkeypatch.setenv("HPO_CONFIG", str(config))
    monkeypatch.setenv("COLUMNS", "200")
    return config


def hpo(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), env=env, input=input, catch_exceptions=False)


@pytest.fixture
def flags(live_server: LiveServer, make_token: Any, team: str) -> tuple[str, ...]:
    return ("--server", live_server.url, "--token", make_token(team, "admin"))


@pytest.fixture
def driven(live_server: LiveServer, make_token: Any, team: str, flags: tuple[str, ...], tmp_path: Path) -> dict[str, Any]:
    """A study 'driven' with trials #0 complete 0.5, #1 complete 0.25, #2 pruned, #3 running at 0.7."""
    assert hpo("submit", *_definition_file(tmp_path, small("driven")), *flags).exit_code == 0
    return populate(live_server, make_token(team, "worker"), "driven")


def _definition_file(folder: Path, definition: dict[str, Any]) -> tuple[str]:
    path = folder / f"{definition['name']}.yaml"
    path.write_text(yaml.safe_dump(definition))
    return (str(path),)


# -- submit, studies -------------------------------------------------------------------------


def test_submit_and_studies(flags: tuple[str, ...], team: str, tmp_path: Path) -> None:
    linear = small("cli-a")
    linear["space"]["lr"] = {"type": "float", "low": 1e-5, "high": 1.0, "log": False}
    (path,) = _definition_file(tmp_path, linear)
    result = hpo("submit", path, *flags)
    assert result.exit_code == 0, result.output
    assert "submitted study cli-a (4 trials, minimize)" in result.stdout
    assert f"optuna name: {team}/cli-a" in result.stdout
    assert "warning: space.lr: searched on a linear scale" in result.stdout

    json_path = tmp_path / "b.json"
    json_path.write_text(json.dumps(small("cli-b")))
    renamed = hpo("submit", str(json_path), "--name", "cli-c", *flags)
    assert renamed.exit_code == 0 and "submitted study cli-c" in renamed.stdout and "warning" not in renamed.stdout

    table = hpo("studies", *flags)
    assert table.exit_code == 0, table.output
    rows = {line.split()[1]: line for line in table.stdout.splitlines() if line.startswith("│ cli-")}
    assert sorted(rows) == ["cli-a", "cli-c"]
    assert "running" in rows["cli-a"] and "0/4" in rows["cli-a"]

    listed = json.loads(hpo("studies", "--json", *flags).stdout)
    assert sorted(s["name"] for s in listed) == ["cli-a", "cli-c"]
    assert {s["optuna_name"] for s in listed} == {f"{team}/cli-a", f"{team}/cli-c"}


def test_submit_refusals(flags: tuple[str, ...], tmp_path: Path) -> None:
    (path,) = _definition_file(tmp_path, small("dup"))
    assert hpo("submit", path, *flags).exit_code == 0
    again = hpo("submit", path, *flags)
    assert again.exit_code == 1 and "a study named 'dup' already exists" in again.stderr
    (bad,) = _definition_file(tmp_path, small("bad", budget={"n_trials": 0}))
    refused = hpo("submit", bad, *flags)
    assert refused.exit_code == 1 and "budget.n_trials" in refused.stderr and "HTTP 422" in refused.stderr
    missing = hpo("submit", str(tmp_path / "nope.yaml"), *flags)
    assert missing.exit_code == 2


# -- status ------------------------------------------------------------------------------------


def test_status(driven: dict[str, Any], flags: tuple[str, ...], team: str) -> None:
    result = hpo("status", "driven", *flags)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"driven  ({team}/driven)  running" in out
    assert "3/4 trials finished" in out
    assert "complete 2  pruned 1  failed 0  running 1  waiting 0" in out
    best = driven["second"]
    assert f"best: 0.25 (trial #{best['number']})" in out
    assert f"batch_size={best['params']['batch_size']}" in out
    running_row = next(line for line in out.splitlines() if line.strip().startswith(f"#{driven['running']['number']} "))
    assert "still-going" in running_row and "0.7" in running_row and " 2 " in running_row


def test_status_watch_refreshes_until_told_to_stop(driven: dict[str, Any], flags: tuple[str, ...]) -> None:
    result = hpo("status", "driven", "--watch", "--max-refreshes", "3", "--interval", "0.2", *flags)
    assert result.exit_code == 0, result.output
    # Piped: each refresh printed in turn.
    assert result.stdout.count("3/4 trials finished") == 3
    assert result.stdout.count("complete 2  pruned 1  failed 0  running 1") == 3
    assert result.stdout.count("still-going") == 3

    # In a terminal it is a rich Live view, refreshed in place.
    live = hpo("status", "driven", "--watch", "--max-refreshes", "2", "--interval", "0.2", *flags, env={"TTY_COMPATIBLE": "1"})
    assert live.exit_code == 0, live.output
    assert "3/4 trials finished" in live.stdout and "running 1" in live.stdout

    # It ends by itself once the study no longer runs.
    assert hpo("stop", "driven", *flags).exit_code == 0
    done = hpo("status", "driven", "--watch", "--interval", "0.2", *flags)
    assert done.exit_code == 0, done.output
    assert done.stdout.count("trials finished") == 1 and "driven  (" in done.stdout and ")  stopped" in done.stdout


# -- best, trials ---------------------------------------------------------------------------


def test_best_as_yaml_and_json(driven: dict[str, Any], flags: tuple[str, ...]) -> None:
    expected = {"number": driven["second"]["number"], "value": 0.25, "params": driven["second"]["params"]}
    as_yaml = hpo("best", "driven", *flags)
    assert as_yaml.exit_code == 0, as_yaml.output
    assert yaml.safe_load(as_yaml.stdout) == expected
    as_json = hpo("best", "driven", "--format", "json", *flags)
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == expected


def test_best_before_any_complete_trial(flags: tuple[str, ...], tmp_path: Path) -> None:
    assert hpo("submit", *_definition_file(tmp_path, small("fresh")), *flags).exit_code == 0
    result = hpo("best", "fresh", *flags)
    assert result.exit_code == 1 and "no complete trial yet" in result.stderr and result.stdout == ""


def test_trials_as_csv_and_table(driven: dict[str, Any], flags: tuple[str, ...]) -> None:
    result = hpo("trials", "driven", "--csv", *flags)
    assert result.exit_code == 0, result.output
    reader = csv.DictReader(io.StringIO(result.stdout))
    params = list(driven["first"]["params"])
    assert reader.fieldnames is not None
    assert reader.fieldnames[:3] == ["number", "state", "value"] and reader.fieldnames[-2:] == ["reason", "diagnosis"]
    assert sorted(reader.fieldnames[3:-2]) == sorted(params)
    rows = {int(r["number"]): r for r in reader}
    assert sorted(rows) == [0, 1, 2, 3]
    assert [rows[n]["state"] for n in range(4)] == ["COMPLETE", "COMPLETE", "PRUNED", "RUNNING"]
    second = rows[driven["second"]["number"]]
    assert float(second["value"]) == 0.25
    for name, value in driven["second"]["params"].items():
        assert (float(second[name]) if isinstance(value, float) else type(value)(second[name])) == value
    assert rows[driven["pruned"]["number"]]["reason"] == "pruned"
    assert rows[driven["running"]["number"]]["value"] == ""

    table = hpo("trials", "driven", *flags)
    assert table.exit_code == 0, table.output
    assert "still-going" in table.stdout and "COMPLETE" in table.stdout and "PRUNED" in table.stdout
    assert all(p in table.stdout for p in params)


# -- stop, delete -------------------------------------------------------------------------------


def test_stop(driven: dict[str, Any], flags: tuple[str, ...]) -> None:
    result = hpo("stop", "driven", *flags)
    assert result.exit_code == 0, result.output
    assert "stopped study driven (3/4 trials finished; 1 running trial will be pruned at the next report)" in result.stdout
    assert ")  stopped" in hpo("status", "driven", *flags).stdout


def test_delete_asks_first(flags: tuple[str, ...], tmp_path: Path) -> None:
    assert hpo("submit", *_definition_file(tmp_path, small("doomed")), *flags).exit_code == 0
    kept = hpo("delete", "doomed", *flags, input="n\n")
    assert kept.exit_code == 1 and "Delete study 'doomed'" in kept.stdout
    assert hpo("status", "doomed", *flags).exit_code == 0
    gone = hpo("delete", "doomed", *flags, input="y\n")
    assert gone.exit_code == 0 and "deleted study doomed" in gone.stdout
    after = hpo("status", "doomed", *flags)
    assert after.exit_code == 1 and "no study named 'doomed'" in after.stderr

    assert hpo("submit", *_definition_file(tmp_path, small("quick")), *flags).exit_code == 0
    quick = hpo("delete", "quick", "--yes", *flags)
    assert quick.exit_code == 0 and "Delete study" not in quick.stdout
    assert "quick" not in hpo("studies", *flags).stdout


# -- plot, report -----------------------------------------------------------------------------


def test_plot(driven: dict[str, Any], flags: tuple[str, ...], tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    result = hpo("plot", "driven", "history", "-o", str(target), *flags)
    assert result.exit_code == 0, result.output
    assert f"wrote {target}" in result.stdout
    assert target.read_bytes().startswith(PNG_SIGNATURE)


def test_report(driven: dict[str, Any], flags: tuple[str, ...], tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    result = hpo("report", "driven", "-o", str(target), *flags)
    assert result.exit_code == 0, result.output
    html = target.read_text()
    assert "<html" in html.lower() and "driven" in html


# -- errors ---------------------------------------------------------------------------------------


def test_errors(live_server: LiveServer, flags: tuple[str, ...]) -> None:
    ghost = hpo("status", "ghost", *flags)
    assert ghost.exit_code == 1 and "error: no study named 'ghost'" in ghost.stderr and ghost.stdout == ""
    for command in (("best", "ghost"), ("trials", "ghost"), ("stop", "ghost"), ("delete", "ghost", "--yes")):
        result = hpo(*command, *flags)
        assert result.exit_code == 1 and "no study named 'ghost'" in result.stderr, (command, result.output)

    no_token = hpo("studies", "--server", live_server.url)
    assert no_token.exit_code == 2 and "no token" in no_token.stderr and "--token" in no_token.stderr

    bad_token = hpo("studies", "--server", live_server.url, "--token", "hpo_00000000_nope")
    assert bad_token.exit_code == 1 and "HTTP 401" in bad_token.stderr

    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = hpo("studies", "--server", closed, "--token", "hpo_x")
    assert unreachable.exit_code == 1 and f"cannot reach {closed}" in unreachable.stderr


# -- where the server and token come from --------------------------------------------------------------


def test_config_file_then_env_then_flags(
    live_server: LiveServer, make_token: Any, team: str, isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = make_token(team, "admin")
    submitted = hpo("submit", *_definition_file(tmp_path, small("configured")), "--server", live_server.url, "--token", token)
    assert submitted.exit_code == 0
    written = write_config(live_server.url, token, isolated)
    assert written == isolated

    # Only the file (HPO_CONFIG): no flags, no token in the environment.
    from_file = hpo("studies")
    assert from_file.exit_code == 0, from_file.output
    assert "configured" in from_file.stdout

    # The environment overrides the file: a token of another team sees other studies.
    other = make_token(team + "x", "admin")
    assert "configured" not in hpo("studies", env={"HPO_TOKEN": other}).stdout
    closed = f"http://127.0.0.1:{free_port()}"
    assert hpo("studies", env={"HPO_SERVER": closed}).exit_code == 1
    assert hpo("studies", env={"HPO_SERVER_URL": closed}).exit_code == 1

    # Flags override the environment.
    assert "configured" in hpo("studies", "--token", token, env={"HPO_TOKEN": other}).stdout
    assert "configured" in hpo("studies", "--server", live_server.url, env={"HPO_SERVER": closed}).stdout

    # A config file that is not a mapping is a clear error, not a traceback.
    isolated.write_text("just a string\n")
    broken = hpo("studies")
    assert broken.exit_code == 2 and "must be a mapping" in broken.stderr


# -- help -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["submit", "studies", "status", "best", "trials", "stop", "delete", "plot", "report"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = hpo(command, "--help")
    assert result.exit_code == 0
    assert f"Example: hpo {command}" in result.stdout
    assert "--server" in result.stdout and "--token" in result.stdout

