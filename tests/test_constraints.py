"""Constraints through the API against the real PostgreSQL: the bounds become Optuna's constraint
values on each trial, an infeasible trial is never the best (ours and Optuna's best_trial agree),
and the API, the history plot and the report show which trials broke a bound."""

from __future__ import annotations

import io
from typing import Any

import optuna
import pytest
from PIL import Image

from tests.conftest import auth
from tests.test_lifecycle import claim, new_study


def finish(api: Any, token: str, name: str, value: float, metrics: dict[str, float] | None) -> int:
    a = claim(api, token, name)
    assert a is not None
    lease = {"lease_id": a["lease_id"]}
    assert api.post(f"/api/v1/trials/{a['trial_id']}/report", json={**lease, "step": 1, "value": value}, headers=auth(token)).status_code == 200
    body = {**lease, "state": "complete", "value": value, "metrics": metrics}
    assert api.post(f"/api/v1/trials/{a['trial_id']}/finish", json=body, headers=auth(token)).status_code == 200
    return int(a["number"])


def test_an_infeasible_trial_is_never_the_best(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    constraints = [{"metric": "params_m", "max": 0.05}, {"metric": "val_accuracy", "min": 0.5}]
    name = new_study(api, token, constraints=constraints, budget={"n_trials": 5, "max_concurrent": 5})
    finish(api, token, name, 0.10, {"params_m": 0.2, "val_accuracy": 0.9})  # the lowest loss, too big
    finish(api, token, name, 0.20, {"params_m": 0.01, "val_accuracy": 0.3})  # too inaccurate
    kept = finish(api, token, name, 0.40, {"params_m": 0.01, "val_accuracy": 0.8})
    finish(api, token, name, 0.15, {"val_accuracy": 0.9})  # params_m not sent: nothing shows it feasible
    finish(api, token, name, 0.50, {"params_m": 0.05, "val_accuracy": 0.5})  # on both bounds: kept

    summary = api.get(f"/api/v1/studies/{name}", headers=auth(token)).json()
    assert summary["best_trial"]["number"] == kept and summary["best_trial"]["value"] == 0.40
    study = optuna.load_study(study_name=f"{team}/{name}", storage=db_url)
    assert study.best_trial.number == kept
    trials = api.get(f"/api/v1/studies/{name}/trials", headers=auth(token)).json()["trials"]
    assert [t["feasible"] for t in trials] == [False, False, True, False, True]
    assert trials[0]["constraints"] == {"params_m:max": pytest.approx(0.15), "val_accuracy:min": pytest.approx(-0.4)}
    assert trials[3]["constraints"]["params_m:max"] is None  # infinitely far: not sent
    assert study.trials[0].constraints == {"params_m:max": pytest.approx(0.15), "val_accuracy:min": pytest.approx(-0.4)}

    png = api.get(f"/api/v1/studies/{name}/plots/history", headers=auth(token))
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).getextrema() != ((255, 255),) * 3
    report = api.get(f"/api/v1/studies/{name}/report", headers=auth(token)).text
    assert "3 of 5 complete trials are infeasible (#0, #1, #3)" in report


def test_constraints_are_checked_against_the_workload(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    for constraints, words in (
        ([{"metric": "latency", "max": 1.0}], "constraints.0.metric: 'latency' is not a metric the mlp workload reports"),
        ([{"metric": "params_m"}], "give max, min or both"),
        ([{"metric": "params_m", "min": 2.0, "max": 1.0}], "min must be below max"),
    ):
        response = api.post("/api/v1/studies", json={**_definition("bad-constraint"), "constraints": constraints}, headers=auth(token))
        assert response.status_code == 422 and words in response.json()["detail"], response.text
    plugin = {"model": "plugin", "entry": "tests.plugins:quadratic"}
    response = api.post(
        "/api/v1/studies",
        json={**_definition("own-metric"), "workload": plugin, "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}}, "constraints": [{"metric": "latency", "max": 1.0}]},
        headers=auth(token),
    )
    assert response.status_code == 201, response.text  # a plugin reports the metrics it likes


def _definition(name: str) -> dict[str, Any]:
    from tests.conftest import digits_definition

    return digits_definition(name)
