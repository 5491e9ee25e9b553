"""Lost trials are failed from Optuna's heartbeats, retried with their params and curve, and
resumed from the lineage's checkpoint; a deleted study answers 410; lineage is visible."""

from __future__ import annotations

import time
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.engine.reaper import tick
from service.settings import Settings
from tests.conftest import auth, digits_definition


@pytest.fixture
def short_lease_api(db_url: str, tmp_path: Any) -> Any:
    settings = Settings(database_url=db_url, lease_seconds=1, heartbeat_seconds=1, reaper_seconds=3600, artifact_dir=tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def claim(api: Any, token: str) -> Any:
    return api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(token))


def checkpoint(api: Any, token: str, a: dict[str, Any], step: int, value: float, data: bytes) -> Any:
    return api.post(
        f"/api/v1/trials/{a['trial_id']}/checkpoint",
        params={"lease_id": a["lease_id"], "step": step, "value": value},
        content=data,
        headers={**auth(token), "Content-Type": "application/octet-stream"},
    )


def reap(api: Any) -> int:
    runtime = api.app.state.runtime
    return tick(runtime.sessions, runtime.storage, runtime.state, runtime.store, runtime.settings)


def trials(api: Any, token: str, name: str) -> list[dict[str, Any]]:
    return api.get(f"/api/v1/studies/{name}/trials", headers=auth(token)).json()["trials"]


def test_a_lost_trial_is_retried_and_resumes_from_its_checkpoint(short_lease_api: Any, make_token: Any, team: str, db_url: str) -> None:
    api, token = short_lease_api, make_token(team)
    definition = digits_definition("lost", pruner={"kind": "none"}, budget={"n_trials": 1, "max_concurrent": 1, "max_retries": 2})
    api.post("/api/v1/studies", json=definition, headers=auth(token))
    a = claim(api, token).json()
    assert (a["attempt"], a["retry_of"], a["resume_step"]) == (1, None, None)
    for step, value in ((1, 0.9), (2, 0.7)):
        assert checkpoint(api, token, a, step, value, f"state after {step}".encode()).json() == {"prune": False}
    # The budget is spent and the trial is running: nothing to claim.
    assert claim(api, token).status_code == 204

    time.sleep(2.5)  # the worker goes silent past the grace period
    # (The pass may also reap other tests' abandoned trials in the shared database.)
    assert reap(api) >= 1
    states = {t["number"]: (t["state"], t["attempt"], t["retry_of"]) for t in trials(api, token, "lost")}
    assert states == {0: ("FAIL", 1, None), 1: ("WAITING", 2, 0)}
    assert api.get("/api/v1/studies/lost", headers=auth(token)).json()["state"] == "running"

    # The retry is claimable although n_trials is spent: n_trials counts lineages.
    b = claim(api, token).json()
    assert (b["number"], b["attempt"], b["retry_of"], b["resume_step"]) == (1, 2, 0, 2)
    assert b["params"] == a["params"]
    got = api.get(f"/api/v1/trials/{b['trial_id']}/checkpoint", params={"lease_id": b["lease_id"]}, headers=auth(token))
    assert got.status_code == 200 and got.content == b"state after 2" and got.headers["X-HPO-Step"] == "2"
    # The curve continues: the retry inherited steps 1-2 and reports from step 3.
    assert checkpoint(api, token, b, 3, 0.5, b"state after 3").status_code == 200
    done = api.post(f"/api/v1/trials/{b['trial_id']}/finish", json={"lease_id": b["lease_id"], "state": "complete", "value": 0.5}, headers=auth(token))
    assert done.status_code == 200
    stored = optuna.load_study(study_name=f"{team}/lost", storage=db_url).trials
    assert stored[1].intermediate_values == {1: 0.9, 2: 0.7, 3: 0.5}
    assert api.get("/api/v1/studies/lost", headers=auth(token)).json()["state"] == "finished"

    # The lost worker comes back: fenced off, and nothing changes on the stored trials.
    late = api.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 3, "value": 0.01}, headers=auth(token))
    assert late.status_code == 409
    late = api.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "complete", "value": 0.01}, headers=auth(token))
    assert late.status_code == 409
    again = optuna.load_study(study_name=f"{team}/lost", storage=db_url).trials
    assert [(t.state.name, t.intermediate_values, t.value) for t in again] == [(t.state.name, t.intermediate_values, t.value) for t in stored]


def test_retries_stop_at_max_retries(short_lease_api: Any, make_token: Any, team: str) -> None:
    api, token = short_lease_api, make_token(team)
    definition = digits_definition("flaky", budget={"n_trials": 1, "max_concurrent": 1, "max_retries": 1})
    api.post("/api/v1/studies", json=definition, headers=auth(token))
    for _ in range(2):
        assert claim(api, token).status_code == 200
        time.sleep(2.5)
        reap(api)
    assert claim(api, token).status_code == 204
    assert [(t["state"], t["attempt"]) for t in trials(api, token, "flaky")] == [("FAIL", 1), ("FAIL", 2)]
    assert api.get("/api/v1/studies/flaky", headers=auth(token)).json()["state"] == "finished"


def test_an_orphaned_trial_is_failed_and_retried_by_the_background_reaper(
    short_lease_api: Any, make_token: Any, team: str, db_url: str
) -> None:
    """A claim that died after Optuna committed its new trial and before its own lease did (API
    killed, database gone) leaves a RUNNING trial that no worker has and no lease points to.
    When nothing else in the study is open, no claim reaps the study: the background pass must."""
    api, token = short_lease_api, make_token(team)
    definition = digits_definition("orphan", budget={"n_trials": 1, "max_concurrent": 1, "max_retries": 1})
    assert api.post("/api/v1/studies", json=definition, headers=auth(token)).status_code == 201
    study = optuna.load_study(study_name=f"{team}/orphan", storage=db_url)
    orphan = study.ask()  # what the dead claim left: RUNNING in Optuna, no lease
    # The budget counts it: nothing to claim, and nothing open that a claim would reap.
    assert claim(api, token).status_code == 204

    time.sleep(2.5)  # older than the grace period
    assert reap(api) >= 1  # (the pass may also reap other tests' abandoned trials)
    states = {t["number"]: (t["state"], t["attempt"], t["retry_of"]) for t in trials(api, token, "orphan")}
    assert states == {orphan.number: ("FAIL", 1, None), orphan.number + 1: ("WAITING", 2, orphan.number)}
    b = claim(api, token).json()
    assert (b["number"], b["attempt"], b["retry_of"]) == (orphan.number + 1, 2, orphan.number)


def test_an_interrupted_trial_is_retried_too(short_lease_api: Any, make_token: Any, team: str) -> None:
    api, token = short_lease_api, make_token(team)
    api.post("/api/v1/studies", json=digits_definition("sigterm", budget={"n_trials": 1, "max_retries": 1}), headers=auth(token))
    a = claim(api, token).json()
    body = {"lease_id": a["lease_id"], "state": "failed", "reason": "interrupted", "error": "worker stopped by signal"}
    assert api.post(f"/api/v1/trials/{a['trial_id']}/finish", json=body, headers=auth(token)).status_code == 200
    b = claim(api, token).json()
    assert (b["attempt"], b["retry_of"], b["resume_step"]) == (2, 0, None)


def test_a_deleted_study_answers_410_to_its_workers(short_lease_api: Any, make_token: Any, team: str) -> None:
    api, token = short_lease_api, make_token(team)
    api.post("/api/v1/studies", json=digits_definition("doomed"), headers=auth(token))
    a = claim(api, token).json()
    assert api.delete("/api/v1/studies/doomed", headers=auth(token)).status_code == 204
    lease = {"lease_id": a["lease_id"]}
    base = f"/api/v1/trials/{a['trial_id']}"
    for response in (
        api.post(f"{base}/report", json={**lease, "step": 1, "value": 0.5}, headers=auth(token)),
        api.post(f"{base}/heartbeat", json=lease, headers=auth(token)),
        api.post(f"{base}/finish", json={**lease, "state": "complete", "value": 0.5}, headers=auth(token)),
        checkpoint(api, token, a, 1, 0.5, b"x"),
    ):
        assert response.status_code == 410, response.text
        assert response.json()["error"] == "gone"
    # The name is free again.
    assert api.post("/api/v1/studies", json=digits_definition("doomed"), headers=auth(token)).status_code == 201


def test_checkpoint_needs_the_current_lease(short_lease_api: Any, make_token: Any, team: str) -> None:
    api, token = short_lease_api, make_token(team)
    api.post("/api/v1/studies", json=digits_definition("ck"), headers=auth(token))
    a = claim(api, token).json()
    assert checkpoint(api, token, {**a, "lease_id": "not-the-lease"}, 1, 0.5, b"x").status_code == 409
    none = api.get(f"/api/v1/trials/{a['trial_id']}/checkpoint", params={"lease_id": a["lease_id"]}, headers=auth(token))
    assert none.status_code == 204  # an original trial has no lineage to resume from


def test_old_checkpoints_go_except_the_best_trials(short_lease_api: Any, make_token: Any, team: str, tmp_path: Any) -> None:
    from service.engine import checkpoints

    api, token = short_lease_api, make_token(team)
    api.post("/api/v1/studies", json=digits_definition("tidy", budget={"n_trials": 3, "max_concurrent": 3}), headers=auth(token))
    claimed = [claim(api, token).json() for _ in range(3)]
    for a, value in zip(claimed, (0.3, 0.1, 0.2)):
        checkpoint(api, token, a, 1, value, b"weights")
    for a, value in zip(claimed[:2], (0.3, 0.1)):
        api.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "complete", "value": value}, headers=auth(token))
    runtime = api.app.state.runtime
    with runtime.sessions.begin() as session:
        removed = checkpoints.tidy(session, runtime.storage, runtime.state.views, runtime.store, runtime.settings.model_copy(update={"checkpoint_retention_seconds": 0}))
    # Trial 0 finished and is not the best: removed. Trial 1 is the best; trial 2 still runs.
    # (Other tests' old checkpoints in the shared database may go in the same pass.)
    assert removed >= 1
    assert sorted(p.name.split("-")[1] for p in tmp_path.iterdir()) == sorted(str(a["trial_id"]) for a in claimed[1:])

    # The next ticks find trial 1's checkpoint again; the best is not read again until a trial
    # completes (Optuna's read orders the study's trial values).
    from sqlalchemy import event

    from service.engine.optuna_adapter.internals import backend_of

    best_reads: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "JOIN trial_values" in statement and "trial_values.value ASC" in statement:  # find_min_value_trial_id
            best_reads.append(statement)

    event.listen(backend_of(runtime.storage).engine, "before_cursor_execute", note)
    try:
        tidy = runtime.settings.model_copy(update={"checkpoint_retention_seconds": 0})
        for _ in range(2):
            with runtime.sessions.begin() as session:
                checkpoints.tidy(session, runtime.storage, runtime.state.views, runtime.store, tidy)
        assert best_reads == []
        # Trial 2 completes better than trial 1: trial 1's checkpoint goes at the next tick.
        a = claimed[2]
        api.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "complete", "value": 0.05}, headers=auth(token))
        with runtime.sessions.begin() as session:
            checkpoints.tidy(session, runtime.storage, runtime.state.views, runtime.store, tidy)
        assert len(best_reads) == 1
    finally:
        event.remove(backend_of(runtime.storage).engine, "before_cursor_execute", note)
    assert [p.name.split("-")[1] for p in tmp_path.iterdir()] == [str(claimed[2]["trial_id"])]
