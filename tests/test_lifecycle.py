"""A study's lifecycle through the API against the real PostgreSQL: enqueued params are the first
trials claimed, budgets are raised on finished and stopped studies, a clone carries its source's
trials into Optuna, and every bad request is a 422 that names the field and changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import optuna
import pytest

from service.engine.storage import CARRIED_KEY
from tests.conftest import auth, digits_definition
from tests.dashboard_helpers import audit_events, sql


def new_study(api: Any, token: str, **overrides: Any) -> str:
    name = f"l-{uuid.uuid4().hex[:8]}"
    response = api.post("/api/v1/studies", json=digits_definition(name, **overrides), headers=auth(token))
    assert response.status_code == 201, response.text
    return name


def claim(api: Any, token: str, name: str) -> dict[str, Any] | None:
    response = api.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": [name]}, headers=auth(token))
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


def run_trial(api: Any, token: str, name: str, curve: list[float], state: str = "complete") -> dict[str, Any]:
    a = claim(api, token, name)
    assert a is not None
    for step, value in enumerate(curve, start=1):
        body = {"lease_id": a["lease_id"], "step": step, "value": value}
        assert api.post(f"/api/v1/trials/{a['trial_id']}/report", json=body, headers=auth(token)).status_code == 200
    body = {"lease_id": a["lease_id"], "state": state, "value": curve[-1] if state == "complete" else None}
    assert api.post(f"/api/v1/trials/{a['trial_id']}/finish", json=body, headers=auth(token)).status_code == 200
    return a


def study_row(db_url: str, team: str, name: str) -> tuple[Any, ...]:
    """What a refused request must leave as it was: our row and Optuna's trials."""
    ours = sql(db_url, "SELECT spec, stopped FROM hpo_studies WHERE name = %(n)s", n=name)
    theirs = sql(
        db_url,
        "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = %(n)s",
        n=f"{team}/{name}",
    )
    return ours[0], theirs[0][0]


def test_enqueued_params_are_the_first_trials_claimed(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    name = new_study(api, token, budget={"n_trials": 4, "max_concurrent": 4})
    good = {"lr": 0.003, "batch_size": 64, "dropout": 0.25, "weight_decay": 1e-4, "optimizer": "adam"}
    partial = {"lr": 0.05, "optimizer": "sgd"}  # the rest is sampled
    response = api.post(f"/api/v1/studies/{name}/trials", json={"trials": [{"params": good}, {"params": partial}]}, headers=auth(token))
    assert response.status_code == 201, response.text
    assert response.json() == {"numbers": [0, 1]}

    first, second, third = (claim(api, token, name) for _ in range(3))
    assert first is not None and second is not None and third is not None
    assert first["number"] == 0 and first["params"] == good
    assert second["number"] == 1 and {k: second["params"][k] for k in partial} == partial
    assert set(second["params"]) == set(good) and 16 <= second["params"]["batch_size"] <= 1024
    assert third["number"] == 2
    # Enqueued trials count in n_trials: 4 in all, so one more claim and the study is done.
    assert claim(api, token, name) is not None and claim(api, token, name) is None
    assert "study.enqueue" in {e["action"] for e in audit_events(api, token)}


CONDITIONAL = {
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "batch_size": {"type": "int", "low": 16, "high": 256, "step": 16},
    "momentum": {"type": "conditional", "on": "optimizer", "cases": {"sgd": {"type": "float", "low": 0.5, "high": 0.99}}},
}
BAD_ENQUEUES = [
    ({"learning_rate": 0.1}, "trials.0.params.learning_rate", "not a searched parameter"),
    ({"batch_size": 24}, "trials.0.params.batch_size", "not on the grid"),
    ({"batch_size": 512}, "trials.0.params.batch_size", "outside [16, 256]"),
    ({"batch_size": "64"}, "trials.0.params.batch_size", "must be an integer"),
    ({"batch_size": True}, "trials.0.params.batch_size", "must be an integer"),
    ({"optimizer": "lamb"}, "trials.0.params.optimizer", "not one of the choices"),
    ({"momentum": 0.9}, "trials.0.params.momentum", "give optimizer too"),
    ({"optimizer": "adam", "momentum": 0.9}, "trials.0.params.momentum", "not a parameter when optimizer is 'adam'"),
    ({"optimizer": "sgd", "momentum": 1.5}, "trials.0.params.momentum", "outside [0.5, 0.99]"),
]


@pytest.mark.parametrize(("params", "field", "words"), BAD_ENQUEUES, ids=[f[1].split(".")[-1] + "-" + f[2][:12] for f in BAD_ENQUEUES])
def test_a_bad_enqueue_is_422_naming_the_parameter_and_queues_nothing(
    api: Any, make_token: Any, team: str, db_url: str, params: dict[str, Any], field: str, words: str
) -> None:
    token = make_token(team)
    name = new_study(api, token, space=CONDITIONAL)
    before = study_row(db_url, team, name)
    response = api.post(f"/api/v1/studies/{name}/trials", json={"trials": [{"params": params}]}, headers=auth(token))
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"] and words in response.json()["detail"], response.json()["detail"]
    assert study_row(db_url, team, name) == before


def test_an_enqueue_beyond_the_budget_is_422_and_queues_nothing(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    name = new_study(api, token, budget={"n_trials": 2, "max_concurrent": 2})
    claim(api, token, name)
    before = study_row(db_url, team, name)
    trials = [{"params": {"optimizer": "sgd"}}, {"params": {"optimizer": "adam"}}]
    response = api.post(f"/api/v1/studies/{name}/trials", json={"trials": trials}, headers=auth(token))
    assert response.status_code == 422
    assert "budget.n_trials" in response.json()["detail"] and '"n_trials": 3' in response.json()["detail"]
    assert study_row(db_url, team, name) == before


def test_extend_and_resume_a_finished_and_a_stopped_study(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    finished = new_study(api, token, budget={"n_trials": 2, "max_concurrent": 2})
    for _ in range(2):
        run_trial(api, token, finished, [1.0, 0.8])
    assert api.get(f"/api/v1/studies/{finished}", headers=auth(token)).json()["state"] == "finished"
    response = api.patch(f"/api/v1/studies/{finished}", json={"budget": {"n_trials": 3, "max_concurrent": 1}}, headers=auth(token))
    assert response.status_code == 200, response.text
    assert (response.json()["state"], response.json()["n_trials"]) == ("running", 3)
    assert response.json()["definition"]["budget"]["max_concurrent"] == 1
    assert claim(api, token, finished) is not None and claim(api, token, finished) is None

    stopped = new_study(api, token)
    assert api.post(f"/api/v1/studies/{stopped}/stop", headers=auth(token)).status_code == 200
    assert claim(api, token, stopped) is None
    response = api.patch(f"/api/v1/studies/{stopped}", json={"stopped": False}, headers=auth(token))
    assert response.status_code == 200 and response.json()["state"] == "running"
    assert claim(api, token, stopped) is not None
    assert "study.update" in {e["action"] for e in audit_events(api, token)}


BAD_PATCHES = [
    ({"space": {"lr": {"type": "float", "low": 0.1, "high": 1.0}}}, "space: cannot change", "clone"),
    ({"sampler": {"kind": "tpe"}}, "sampler: cannot change", "clone"),
    ({"color": "red"}, "color: not a field", "budget, stopped"),
    ({"budget": {"n_trials": 0}}, "budget.n_trials", "greater than or equal to 1"),
    ({"budget": {"n_trials": 1}}, "budget.n_trials", "at least 2"),
    ({"budget": {"max_concurrent": 0}}, "budget.max_concurrent", "greater than or equal to 1"),
    ({"budget": {"n_retries": 3}}, "budget.n_retries", "Extra inputs"),
    ({"stopped": "maybe"}, "stopped", "boolean"),
]


@pytest.mark.parametrize(("body", "field", "words"), BAD_PATCHES, ids=[next(iter(b)) + str(i) for i, (b, _, _) in enumerate(BAD_PATCHES)])
def test_a_bad_update_is_422_naming_the_field_and_changes_nothing(
    api: Any, make_token: Any, team: str, db_url: str, body: dict[str, Any], field: str, words: str
) -> None:
    token = make_token(team)
    name = new_study(api, token)
    claim(api, token, name)
    claim(api, token, name)
    before = study_row(db_url, team, name)
    response = api.patch(f"/api/v1/studies/{name}", json=body, headers=auth(token))
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"] and words in response.json()["detail"], response.json()["detail"]
    assert study_row(db_url, team, name) == before


def test_a_clone_carries_the_trials_that_fit_its_space_into_optuna(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}, "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]}}
    source = new_study(api, token, space=space, budget={"n_trials": 6, "max_concurrent": 6})
    enqueued = [{"params": {"lr": lr, "optimizer": "adam"}} for lr in (0.3, 0.01, 0.002, 0.0005)]
    assert api.post(f"/api/v1/studies/{source}/trials", json={"trials": enqueued}, headers=auth(token)).status_code == 201
    run_trial(api, token, source, [1.5, 1.2, 1.1])  # lr 0.3: outside the clone's range
    run_trial(api, token, source, [1.0, 0.7, 0.5])
    run_trial(api, token, source, [1.4, 1.3], state="pruned")
    run_trial(api, token, source, [2.0], state="failed")  # carried too: the sampler knows where it failed

    changes = {"space": {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}, "budget": {"n_trials": 3}}
    response = api.post(
        f"/api/v1/studies/{source}/clone", json={"name": f"{source}-b", "changes": changes, "carry_trials": True}, headers=auth(token)
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["carried"], body["left_out"]) == (3, 1)
    assert body["definition"]["space"]["lr"]["high"] == 0.1 and body["n_trials"] == 3
    assert body["state"] == "running" and [body["counts"][s] for s in ("COMPLETE", "PRUNED", "FAIL")] == [1, 1, 1]

    theirs = optuna.load_study(study_name=f"{team}/{source}", storage=db_url).trials
    ours = optuna.load_study(study_name=f"{team}/{source}-b", storage=db_url).trials
    assert [(t.state, t.values, t.params, t.intermediate_values) for t in ours] == [
        (t.state, t.values, t.params, t.intermediate_values) for t in theirs if t.number in (1, 2, 3)
    ]
    assert [t.system_attrs[CARRIED_KEY] for t in ours] == [f"{team}/{source}#{n}" for n in (1, 2, 3)]
    assert ours[0].distributions["lr"].high == 0.1  # the clone's space, which TPE reads
    listing = api.get(f"/api/v1/studies/{source}-b/trials", headers=auth(token)).json()["trials"]
    assert [t["carried_from"] for t in listing] == [f"{team}/{source}#{n}" for n in (1, 2, 3)]
    # Carried trials inform the sampler; the clone's own budget is still whole.
    assert [claim(api, token, f"{source}-b") is not None for _ in range(4)] == [True, True, True, False]
    assert "study.clone" in {e["action"] for e in audit_events(api, token)}


def test_a_bad_clone_is_422_and_creates_nothing(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    source = new_study(api, token)
    before = sql(db_url, "SELECT count(*) FROM hpo_studies")[0][0]
    cases = [
        ({"name": "Bad Name"}, "name"),
        ({"name": "ok-clone", "changes": {"space": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}}}, "space.lr"),
        ({"name": "ok-clone", "changes": {"sampler": {"kind": "bayesian"}}}, "sampler.kind"),
        ({"name": source}, "already exists"),
    ]
    for body, words in cases:
        response = api.post(f"/api/v1/studies/{source}/clone", json=body, headers=auth(token))
        assert response.status_code in (409, 422), response.text
        assert words in response.json()["detail"], response.json()["detail"]
    assert sql(db_url, "SELECT count(*) FROM hpo_studies")[0][0] == before
