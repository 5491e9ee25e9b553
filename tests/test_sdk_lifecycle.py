"""hpo_client.Client's lifecycle calls (enqueue, extend, resume, clone) against a real `hpo serve`
and PostgreSQL. Trials are claimed and finished over the worker protocol by the test (no torch)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hpo_client import Client, InvalidRequestError, Study
from hpo_client.models import StudyCloned
from tests.conftest import LiveServer, digits_definition
from tests.test_sdk_client import run_trial, small

GOOD = {"lr": 0.003, "batch_size": 64, "dropout": 0.25, "weight_decay": 1e-4, "optimizer": "adam"}


@pytest.fixture
def admin(make_token: Any, team: str) -> str:
    return make_token(team, "admin")


@pytest.fixture
def hpo(live_server: LiveServer, admin: str) -> Any:
    with Client(live_server.url, admin) as c:
        yield c


@pytest.fixture
def worker(live_server: LiveServer, admin: str) -> Any:
    """The worker protocol with the same admin token."""
    with live_server.client(admin) as w:
        yield w


def budget_of(study: Study) -> dict[str, Any]:
    return {k: study.definition["budget"][k] for k in ("n_trials", "max_concurrent", "max_retries")}


def try_claim(worker: httpx.Client, name: str) -> dict[str, Any] | None:
    response = worker.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": [name]})
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


def test_enqueued_params_are_claimed_first(hpo: Client, worker: httpx.Client) -> None:
    hpo.submit(small("warm"))
    partial = {"lr": 0.05, "optimizer": "sgd"}
    assert hpo.enqueue("warm", [GOOD, partial]) == [0, 1]
    assert hpo.enqueue("warm", {"optimizer": "adam"}) == [2]  # one dict, one trial

    first, second, third = (try_claim(worker, "warm") for _ in range(3))
    assert first is not None and first["number"] == 0 and first["params"] == GOOD
    assert second is not None and {k: second["params"][k] for k in partial} == partial
    assert set(second["params"]) == set(GOOD)  # the rest was sampled
    assert third is not None and third["params"]["optimizer"] == "adam"
    assert hpo.study("warm").count("RUNNING") == 3


def test_extend_a_finished_study(hpo: Client, worker: httpx.Client) -> None:
    hpo.submit(digits_definition("once", budget={"n_trials": 1, "max_concurrent": 1}))
    run_trial(worker, "once", [0.9, 0.5])
    assert hpo.study("once").state == "finished" and try_claim(worker, "once") is None

    extended = hpo.extend("once", n_trials=3, max_concurrent=2, max_retries=1)
    assert isinstance(extended, Study)
    assert (extended.state, extended.n_trials) == ("running", 3)
    assert budget_of(extended) == {"n_trials": 3, "max_concurrent": 2, "max_retries": 1}
    assert try_claim(worker, "once") is not None and try_claim(worker, "once") is not None
    assert try_claim(worker, "once") is None  # 3 in all

    # Only what is given changes.
    assert budget_of(hpo.extend("once", max_concurrent=4)) == {"n_trials": 3, "max_concurrent": 4, "max_retries": 1}
    with pytest.raises(ValueError, match="at least one"):
        hpo.extend("once")


def test_resume_a_stopped_study(hpo: Client, worker: httpx.Client) -> None:
    hpo.submit(small("paused"))
    stopped = worker.post("/api/v1/studies/paused/stop")
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert try_claim(worker, "paused") is None

    resumed = hpo.resume("paused")
    assert (resumed.state, resumed.n_trials) == ("running", 4)
    assert try_claim(worker, "paused") is not None

    # Stopped again, resumed with a bigger budget in the same call; update() says both at once.
    assert hpo.update("paused", stopped=True).state == "stopped"
    again = hpo.resume("paused", n_trials=6)
    assert (again.state, again.n_trials) == ("running", 6)


def test_clone_carries_the_trials_that_fit(hpo: Client, worker: httpx.Client, team: str) -> None:
    hpo.submit(small("source"))
    hpo.enqueue("source", [{**GOOD, "lr": lr} for lr in (0.5, 0.01, 0.002)])
    for losses in ([1.5, 1.2], [1.0, 0.6], [0.9, 0.7]):
        run_trial(worker, "source", losses)

    changes = {"space": {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}, "budget": {"n_trials": 2}}
    cloned = hpo.clone("source", "narrow", changes=changes, carry_trials=True)
    assert isinstance(cloned, StudyCloned)
    assert (cloned.name, cloned.optuna_name, cloned.n_trials) == ("narrow", f"{team}/narrow", 2)
    assert (cloned.carried, cloned.left_out) == (2, 1)  # lr 0.5 leaves the new range
    assert cloned.definition["space"]["lr"]["high"] == 0.1 and cloned.warnings == []
    assert sorted(t.value for t in hpo.trials("narrow")) == [0.6, 0.7]

    plain = hpo.clone("source", "plain")
    assert (plain.carried, plain.left_out) == (0, 0) and hpo.trials("plain") == []
    assert plain.definition["space"] == hpo.study("source").definition["space"]


def test_refusals_name_the_field(hpo: Client) -> None:
    hpo.submit(small("strict"))
    with pytest.raises(InvalidRequestError) as info:
        hpo.enqueue("strict", {"learning_rate": 0.1})
    assert info.value.status == 422 and "trials.0.params.learning_rate" in info.value.detail

    with pytest.raises(InvalidRequestError) as info:
        hpo.enqueue("strict", [{"optimizer": "sgd"}] * 5)  # n_trials is 4
    assert "budget.n_trials" in info.value.detail

    with pytest.raises(InvalidRequestError) as info:
        hpo.extend("strict", max_concurrent=0)
    assert "budget.max_concurrent" in info.value.detail

    with pytest.raises(InvalidRequestError) as info:
        hpo.clone("strict", "strict-2", changes={"space": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}})
    assert "space.lr" in info.value.detail
    assert [s.name for s in hpo.studies()] == ["strict"] and hpo.trials("strict") == []
