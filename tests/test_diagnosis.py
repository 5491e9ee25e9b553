"""Curve diagnosis and the study's hints: the pure rules, then stored through the protocol."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from service.engine.diagnosis import Diagnosed, diagnose, hints
from tests.conftest import auth, digits_definition


@pytest.mark.parametrize(
    ("curve", "start", "reason", "expected"),
    [
        ([2.3, 1.2, 0.7, 0.5, 0.45, 0.44], None, None, "healthy"),
        ([2.3, float("nan")], None, None, "diverged"),
        ([2.3, float("inf")], None, None, "diverged"),
        ([2.3, 2.2], None, "diverged", "diverged"),
        ([2.3, 2.6, 3.5, 5.0], None, None, "diverged"),  # rising sharply, never better than the start
        ([2.30, 2.299, 2.298, 2.297, 2.296], None, None, "too_slow"),
        ([2.30, 2.299, 2.298], 2.302, None, "too_slow"),
        # Flat after epoch 1 but far below the untrained loss: trained, then plateaued.
        ([0.30, 0.299, 0.298], 2.302, None, "healthy"),
        ([2.3, 1.4, 2.1, 1.3, 2.2, 1.5, 2.0], None, None, "oscillating"),
        # Noisy but trending down is healthy, not oscillating.
        ([2.3, 1.5, 1.6, 1.0, 1.05, 0.7, 0.72, 0.5], None, None, "healthy"),
        ([], None, None, None),
        ([1.0], None, None, None),
    ],
)
def test_diagnose(curve: list[float], start: float | None, reason: str | None, expected: str | None) -> None:
    assert diagnose(curve, reason=reason, start=start) == expected


def test_hints_name_the_lr_where_trials_diverged() -> None:
    trials = [Diagnosed("diverged", {"lr": lr}) for lr in (0.3, 0.5, 0.9, 0.25)]
    trials += [Diagnosed("healthy", {"lr": lr}) for lr in (0.4, 0.21, 0.01, 0.001, 0.002)]
    (hint,) = hints(trials)
    assert hint.startswith("4 of 5 trials with lr >= 0.25 diverged") and "lowering lr's upper bound" in hint
    # One divergence at a low lr does not drag the threshold down past the healthy runs.
    (hint,) = hints(trials + [Diagnosed("diverged", {"lr": 0.0015})])
    assert hint.startswith("4 of 5 trials with lr >= 0.25 diverged")


def test_hints_name_the_lr_where_trials_were_too_slow() -> None:
    trials = [Diagnosed("too_slow", {"lr": lr}) for lr in (1e-6, 3e-6)] + [Diagnosed("healthy", {"lr": 1e-3})]
    (hint,) = hints(trials)
    assert hint.startswith("2 of 2 trials with lr <= 3e-06 were too slow") and "raising lr's lower bound" in hint


def test_hints_for_a_fixed_lr() -> None:
    (hint,) = hints([Diagnosed("diverged", {}), Diagnosed("diverged", {})], fixed_lr=10.0)
    assert "2 of 2" in hint and "fixed lr 10" in hint and "too high" in hint
    assert hints([Diagnosed("healthy", {"lr": 0.01})]) == []


def _run_trial(api: Any, token: str, values: list[float], **finish: Any) -> dict[str, Any]:
    a = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(token)).json()
    base, lease = f"/api/v1/trials/{a['trial_id']}", {"lease_id": a["lease_id"]}
    for step, value in enumerate(values, start=1):
        api.post(f"{base}/report", json={**lease, "step": step, "value": value}, headers=auth(token))
    r = api.post(f"{base}/finish", json={**lease, **finish}, headers=auth(token))
    assert r.status_code == 200, r.text
    return a


def test_finish_stores_reason_metrics_and_diagnosis(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    definition = digits_definition("diag", pruner={"kind": "none"}, budget={"n_trials": 3, "max_concurrent": 3})
    api.post("/api/v1/studies", json=definition, headers=auth(token))
    _run_trial(api, token, [2.3, 1.0, 0.5], state="complete", value=0.5, metrics={"val_accuracy": 0.9, "initial_val_loss": 2.31})
    _run_trial(api, token, [2.3], state="pruned", reason="diverged", error="training loss is nan at epoch 1, step 3")
    _run_trial(api, token, [2.30, 2.299, 2.298], state="complete", value=2.298, metrics={"initial_val_loss": 2.301})

    trials = api.get("/api/v1/studies/diag/trials", headers=auth(token)).json()["trials"]
    by_number = {t["number"]: t for t in trials}
    assert by_number[0]["diagnosis"] == "healthy" and by_number[0]["metrics"]["val_accuracy"] == 0.9
    assert by_number[1]["state"] == "PRUNED" and by_number[1]["reason"] == "diverged" and by_number[1]["diagnosis"] == "diverged"
    assert by_number[2]["diagnosis"] == "too_slow"
    # As Optuna user attributes, so optuna-dashboard shows them.
    stored = optuna.load_study(study_name=f"{team}/diag", storage=db_url).trials
    assert stored[1].user_attrs["reason"] == "diverged" and stored[2].user_attrs["diagnosis"] == "too_slow"

    summary = api.get("/api/v1/studies/diag", headers=auth(token)).json()
    assert summary["diagnosis"]["counts"] == {"diverged": 1, "oscillating": 0, "too_slow": 1, "healthy": 1}
    assert any("diverged" in h for h in summary["diagnosis"]["hints"])


@pytest.mark.parametrize(
    ("body", "field"),
    [({"reason": "Not A Code!"}, "reason"), ({"metrics": {"acc": "high"}}, "metrics")],
)
def test_bad_finish_fields_are_422(api: Any, make_token: Any, team: str, body: dict[str, Any], field: str) -> None:
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("diag-bad"), headers=auth(token))
    a = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(token)).json()
    r = api.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "failed", **body}, headers=auth(token))
    assert r.status_code == 422 and field in r.text
