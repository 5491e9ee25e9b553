"""The worker protocol on the real database: leases, fencing, pruning, stop, budgets."""

from __future__ import annotations

import time
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import auth, digits_definition


def claim(api: Any, token: str, **body: Any) -> Any:
    return api.post("/api/v1/trials/claim", json={"worker_id": "w1", **body}, headers=auth(token))


def trial_states(db_url: str, name: str) -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=db_url)
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


def test_claim_report_finish_round_trip(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("rt", budget={"n_trials": 1, "max_concurrent": 1}), headers=auth(token))
    a = claim(api, token).json()
    assert set(a["params"]) == {"lr", "batch_size", "dropout", "weight_decay", "optimizer"}
    assert 16 <= a["params"]["batch_size"] <= 1024 and a["workload"]["epochs"] == 3
    base = f"/api/v1/trials/{a['trial_id']}"
    lease = {"lease_id": a["lease_id"]}
    assert api.post(f"{base}/report", json={**lease, "step": 1, "value": 0.9}, headers=auth(token)).json() == {"prune": False}
    # Repeating a step is harmless: the first value stays.
    assert api.post(f"{base}/report", json={**lease, "step": 1, "value": 0.1}, headers=auth(token)).status_code == 200
    assert api.post(f"{base}/heartbeat", json=lease, headers=auth(token)).status_code == 200
    done = api.post(f"{base}/finish", json={**lease, "state": "complete", "value": 0.9}, headers=auth(token))
    assert done.status_code == 200, done.text
    # The same finish again (a retry after a lost response) is fine; a different one is not.
    assert api.post(f"{base}/finish", json={**lease, "state": "complete", "value": 0.9}, headers=auth(token)).status_code == 200
    assert api.post(f"{base}/finish", json={**lease, "state": "failed"}, headers=auth(token)).status_code == 409
    assert claim(api, token).status_code == 204  # n_trials reached

    trials = api.get("/api/v1/studies/rt/trials", headers=auth(token)).json()["trials"]
    assert trials[0]["state"] == "COMPLETE" and trials[0]["value"] == 0.9
    assert trials[0]["intermediate_values"] == {"1": 0.9} and trials[0]["worker_id"] == "w1"
    summary = api.get("/api/v1/studies/rt", headers=auth(token)).json()
    assert summary["state"] == "finished" and summary["best_trial"]["value"] == 0.9


def test_stale_lease_is_409_and_changes_nothing(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("fence"), headers=auth(token))
    a = claim(api, token).json()
    base = f"/api/v1/trials/{a['trial_id']}"
    stale = {"lease_id": "00000000-0000-0000-0000-000000000000"}
    for path, body in [
        ("report", {**stale, "step": 1, "value": 0.5}),
        ("heartbeat", stale),
        ("finish", {**stale, "state": "complete", "value": 0.5}),
    ]:
        response = api.post(f"{base}/{path}", json=body, headers=auth(token))
        assert response.status_code == 409, (path, response.text)
        assert response.json()["error"] == "lease_lost"
    study = optuna.load_study(study_name=f"{team}/fence", storage=db_url)
    trial = study.get_trials()[0]
    assert trial.state.name == "RUNNING" and trial.intermediate_values == {}
    # Another team cannot even see the trial.
    other = make_token(team + "o")
    response = api.post(f"{base}/report", json={"lease_id": a["lease_id"], "step": 1, "value": 0.5}, headers=auth(other))
    assert response.status_code == 404


def test_report_on_a_trial_optuna_has_finished_is_409_and_writes_nothing(
    api: Any, make_token: Any, team: str, db_url: str
) -> None:
    """The report writes Optuna's intermediate values itself (reports.py): it must
    refuse a trial that Optuna has finished, as Optuna's set_trial_intermediate_value does, even
    while the lease is live (someone told the trial from optuna-dashboard)."""
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("told"), headers=auth(token))
    a = claim(api, token).json()
    base = f"/api/v1/trials/{a['trial_id']}"
    lease = {"lease_id": a["lease_id"]}
    assert api.post(f"{base}/report", json={**lease, "step": 1, "value": 0.7}, headers=auth(token)).status_code == 200
    study = optuna.load_study(study_name=f"{team}/told", storage=db_url)
    study.tell(a["number"], 0.7)
    response = api.post(f"{base}/report", json={**lease, "step": 2, "value": 0.5}, headers=auth(token))
    assert response.status_code == 409, response.text
    assert study.get_trials()[0].intermediate_values == {1: 0.7}


def test_max_concurrent_and_n_trials(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("cap", budget={"n_trials": 3, "max_concurrent": 2}), headers=auth(token))
    first, second = claim(api, token).json(), claim(api, token).json()
    assert claim(api, token).status_code == 204  # two running = max_concurrent
    api.post(f"/api/v1/trials/{first['trial_id']}/finish", json={"lease_id": first["lease_id"], "state": "pruned"}, headers=auth(token))
    third = claim(api, token)
    assert third.status_code == 200
    assert claim(api, token).status_code == 204  # three claimed = n_trials
    numbers = {first["number"], second["number"], third.json()["number"]}
    assert numbers == {0, 1, 2}


def test_stopped_study_prunes_running_trials(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("halt"), headers=auth(token))
    a = claim(api, token).json()
    api.post("/api/v1/studies/halt/stop", headers=auth(token))
    response = api.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 1, "value": 0.3}, headers=auth(token))
    assert response.json() == {"prune": True}
    assert claim(api, token).status_code == 204


def test_median_pruning_decides_in_the_service(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    definition = digits_definition("median", pruner={"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0})
    definition["budget"] = {"n_trials": 10, "max_concurrent": 10}
    api.post("/api/v1/studies", json=definition, headers=auth(token))

    def run(losses: list[float]) -> bool:
        a = claim(api, token).json()
        pruned = False
        for step, value in enumerate(losses, start=1):
            r = api.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": step, "value": value}, headers=auth(token))
            if r.json()["prune"]:
                pruned = True
                break
        state = "pruned" if pruned else "complete"
        api.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": state, "value": min(losses)}, headers=auth(token))
        return pruned

    assert not run([1.0, 0.5, 0.2])
    assert not run([1.0, 0.6, 0.3])
    assert run([5.0, 5.0, 5.0])  # worse than the median of the completed trials at step 1
    assert not run([0.8, 0.4, 0.1])


def test_bad_reports_are_422(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("badrep"), headers=auth(token))
    a = claim(api, token).json()
    base = f"/api/v1/trials/{a['trial_id']}"
    for body in ({"lease_id": a["lease_id"], "step": -1, "value": 1.0}, {"lease_id": a["lease_id"], "step": 1}):
        response = api.post(f"{base}/report", json=body, headers=auth(token))
        assert response.status_code == 422
    response = api.post(f"{base}/finish", json={"lease_id": a["lease_id"], "state": "complete"}, headers=auth(token))
    assert response.status_code == 422 and "value" in response.json()["detail"]
    response = api.post(f"{base}/finish", json={"lease_id": a["lease_id"], "state": "exploded"}, headers=auth(token))
    assert response.status_code == 422 and "state" in response.json()["detail"]


@pytest.fixture
def short_lease_api(db_url: str) -> Any:
    with TestClient(create_app(Settings(database_url=db_url, lease_seconds=0.5)), raise_server_exceptions=False) as client:
        yield client


def test_expired_lease_fails_the_trial_and_frees_the_slot(short_lease_api: Any, make_token: Any, team: str, db_url: str) -> None:
    api = short_lease_api
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("expiry", budget={"n_trials": 2, "max_concurrent": 1}), headers=auth(token))
    a = claim(api, token).json()
    time.sleep(2.5)  # past the 1 s grace period (Optuna's heartbeat staleness is in whole seconds)
    b = claim(api, token)  # the silent worker's lease has expired: its slot is free again
    assert b.status_code == 200
    assert trial_states(db_url, f"{team}/expiry") == {0: "FAIL", 1: "RUNNING"}
    late = api.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 1, "value": 0.1}, headers=auth(token))
    assert late.status_code == 409


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_422_and_change_nothing(api: Any, make_token: Any, team: str, db_url: str, bad: str) -> None:
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("finite"), headers=auth(token))
    a = claim(api, token).json()
    base = f"/api/v1/trials/{a['trial_id']}"
    headers = {**auth(token), "Content-Type": "application/json"}
    report = api.post(f"{base}/report", content=f'{{"lease_id": "{a["lease_id"]}", "step": 1, "value": {bad}}}', headers=headers)
    finish = api.post(f"{base}/finish", content=f'{{"lease_id": "{a["lease_id"]}", "state": "complete", "value": {bad}}}', headers=headers)
    ckpt = api.post(f"{base}/checkpoint", params={"lease_id": a["lease_id"], "step": 1, "value": bad}, content=b"x", headers=auth(token))
    for response in (report, finish, ckpt):
        assert response.status_code == 422 and "value" in response.json()["detail"], response.text
    trial = optuna.load_study(study_name=f"{team}/finite", storage=db_url).trials[0]
    assert trial.state.name == "RUNNING" and trial.intermediate_values == {}
