"""Compute budgets through the worker protocol against the real PostgreSQL: epochs, trial wall
time and a deadline end a study with its running trials finished, never cut."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.conftest import auth, wait_for
from tests.test_lifecycle import claim, new_study

EPOCHS = 10


def report(api: Any, token: str, a: dict[str, Any], step: int, value: float) -> bool:
    body = {"lease_id": a["lease_id"], "step": step, "value": value}
    response = api.post(f"/api/v1/trials/{a['trial_id']}/report", json=body, headers=auth(token))
    assert response.status_code == 200, response.text
    return bool(response.json()["prune"])


def finish(api: Any, token: str, a: dict[str, Any], state: str, value: float | None = None, reason: str | None = None) -> None:
    body = {"lease_id": a["lease_id"], "state": state, "value": value, "reason": reason}
    assert api.post(f"/api/v1/trials/{a['trial_id']}/finish", json=body, headers=auth(token)).status_code == 200


def budget_of(api: Any, token: str, name: str) -> dict[str, Any]:
    return api.get(f"/api/v1/studies/{name}", headers=auth(token)).json()


def test_max_epochs_hands_out_trials_until_reported_plus_in_flight_reach_it(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    name = new_study(
        api,
        token,
        workload={"model": "mlp", "dataset": "digits", "epochs": EPOCHS},
        pruner={"kind": "none"},
        budget={"n_trials": 100, "max_concurrent": 10, "max_epochs": 60, "max_retries": 2},
    )
    # Six trials of 10 epochs are 60 in flight: the seventh claim is refused.
    running = [claim(api, token, name) for _ in range(6)]
    assert all(running) and claim(api, token, name) is None
    summary = budget_of(api, token, name)
    assert summary["budget"]["max_epochs"] == {"limit": 60, "used": 0, "in_flight": 60, "left": 0}
    assert summary["budget"]["binding"] == summary["budget"]["exhausted"] == "max_epochs"
    assert summary["state"] == "running"

    # One stops after 2 epochs (the worker prunes it): 8 epochs given back, room for one more trial.
    a = running.pop()
    report(api, token, a, 1, 1.0)
    report(api, token, a, 2, 0.9)
    finish(api, token, a, "pruned")
    # One is interrupted after 4 epochs and retried: its retry starts with those 4 (inherited, not
    # counted twice) and may train 6 more.
    b = running.pop()
    for step in range(1, 5):
        report(api, token, b, step, 1.0 / step)
    finish(api, token, b, "failed", reason="interrupted")
    retry = claim(api, token, name)
    assert retry is not None and retry["retry_of"] == b["number"]
    assert budget_of(api, token, name)["budget"]["max_epochs"]["used"] == 6  # 2 + 4
    running.append(retry)
    extra = claim(api, token, name)
    assert extra is not None and claim(api, token, name) is None
    running.append(extra)

    # Everything still running trains all its epochs: the budget never cuts a trial.
    for a in running:
        start = 5 if a is retry else 1
        assert not any(report(api, token, a, step, 1.0 / step) for step in range(start, EPOCHS + 1))
        finish(api, token, a, "complete", 1.0 / EPOCHS)
    summary = budget_of(api, token, name)
    used = summary["budget"]["max_epochs"]["used"]
    assert used == 2 + 4 + 6 + 10 * 5 and used >= 60
    assert summary["state"] == "finished" and claim(api, token, name) is None
    trials = api.get(f"/api/v1/studies/{name}/trials", headers=auth(token)).json()["trials"]
    assert all(len(t["intermediate_values"]) == EPOCHS for t in trials if t["state"] == "COMPLETE")


def test_max_seconds_stops_claims_and_lets_running_trials_finish(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    name = new_study(api, token, pruner={"kind": "none"}, budget={"n_trials": 100, "max_concurrent": 4, "max_seconds": 1.0})
    a = claim(api, token, name)
    assert a is not None
    wait_for(lambda: budget_of(api, token, name)["budget"]["max_seconds"]["left"] == 0, 30, "the lease's time never counted")
    assert claim(api, token, name) is None
    assert budget_of(api, token, name)["state"] == "running"  # its trial still runs
    assert not report(api, token, a, 1, 0.5)
    finish(api, token, a, "complete", 0.5)
    summary = budget_of(api, token, name)
    assert summary["state"] == "finished" and summary["budget"]["exhausted"] == "max_seconds"
    assert summary["budget"]["max_seconds"]["used"] >= 1.0


def test_a_deadline_ends_claims(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    until = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    name = new_study(api, token, budget={"n_trials": 100, "max_concurrent": 4, "until": until})
    assert claim(api, token, name) is not None
    assert budget_of(api, token, name)["budget"]["until"]["left_seconds"] > 0
    time.sleep(2.1)
    assert claim(api, token, name) is None
    assert budget_of(api, token, name)["budget"]["exhausted"] == "until"


def test_budgets_are_raised_with_patch(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    name = new_study(api, token, workload={"model": "mlp", "dataset": "digits", "epochs": 3}, budget={"n_trials": 100, "max_epochs": 3})
    assert claim(api, token, name) is not None and claim(api, token, name) is None
    response = api.patch(f"/api/v1/studies/{name}", json={"budget": {"max_epochs": 6}}, headers=auth(token))
    assert response.status_code == 200 and response.json()["budget"]["max_epochs"]["left"] == 3
    assert claim(api, token, name) is not None
    bad = api.patch(f"/api/v1/studies/{name}", json={"budget": {"until": "2027-01-01T00:00:00"}}, headers=auth(token))
    assert bad.status_code == 422 and "budget.until" in bad.json()["detail"] and "time zone" in bad.json()["detail"]


def test_hpo_status_follows_the_binding_budget(api: Any, make_token: Any, team: str) -> None:
    from rich.console import Console

    from hpo_client.models import Study
    from service.cli.studies import status_view

    token = make_token(team)
    name = new_study(api, token, workload={"model": "mlp", "dataset": "digits", "epochs": 5}, budget={"n_trials": 100, "max_epochs": 12})
    a = claim(api, token, name)
    assert a is not None
    report(api, token, a, 1, 0.9)

    def shown() -> str:
        console = Console(width=200, record=True)
        console.print(status_view(Study.model_validate(budget_of(api, token, name)), []))
        return console.export_text()

    assert "1/12 epochs used (4 in flight); 0 trials finished" in shown()
    plain = new_study(api, token)
    name = plain
    assert "0/4 trials finished" in shown()
