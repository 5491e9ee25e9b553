"""Export and import through the API against the real PostgreSQL: an exported study opens in plain
Optuna and comes back whole; a notebook's SQLite file and a notebook's study on the service's
database go into a team's study; a bad upload is a 422 that stores nothing."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import auth
from tests.dashboard_helpers import audit_events, sql
from tests.test_lifecycle import new_study, run_trial

SQLITE = {"Content-Type": "application/octet-stream"}


def facts(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[Any, ...]]:
    """What a round trip must keep of every trial."""
    return [(t.state, t.values, t.params, t.intermediate_values, t.user_attrs) for t in trials]


def test_an_export_opens_in_optuna_and_imports_back_whole(api: Any, make_token: Any, team: str, db_url: str, tmp_path: Path) -> None:
    token = make_token(team)
    name = new_study(api, token, budget={"n_trials": 3, "max_concurrent": 3})
    run_trial(api, token, name, [1.2, 0.9, 0.7])
    run_trial(api, token, name, [1.5, 1.4], state="pruned")
    run_trial(api, token, name, [2.0], state="failed")

    response = api.get(f"/api/v1/studies/{name}/export", headers=auth(token))
    assert response.status_code == 200 and response.headers["content-type"] == "application/vnd.sqlite3"
    assert f'filename="{name}.db"' in response.headers["content-disposition"]
    exported = tmp_path / "export.db"
    exported.write_bytes(response.content)
    theirs = optuna.load_study(study_name=name, storage=f"sqlite:///{exported}")
    ours = optuna.load_study(study_name=f"{team}/{name}", storage=db_url)
    assert facts(theirs.trials) == facts(ours.trials)
    assert theirs.user_attrs["hpo_definition"]["name"] == name

    response = api.post("/api/v1/studies/import", params={"name": f"{name}-back"}, content=response.content, headers={**auth(token), **SQLITE})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["carried"], body["left_out"]) == (3, 0)
    assert body["definition"] == {**ours.user_attrs["hpo_definition"], "name": f"{name}-back"}
    back = optuna.load_study(study_name=f"{team}/{name}-back", storage=db_url)
    assert facts(back.trials) == facts(ours.trials)
    assert "study.import" in {e["action"] for e in audit_events(api, token)}


def test_a_notebooks_file_goes_into_an_existing_study(api: Any, make_token: Any, team: str, tmp_path: Path) -> None:
    token = make_token(team)
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}, "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]}}
    name = new_study(api, token, space=space)
    path = tmp_path / "notebook.db"
    study = optuna.create_study(study_name="notebook", storage=f"sqlite:///{path}")
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-6, 10.0, log=True), "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adam"])}
    for i, lr in enumerate([0.01, 0.3, 5.0]):  # 5.0 leaves the study's space
        study.add_trial(optuna.trial.create_trial(params={"lr": lr, "optimizer": "adam"}, distributions=distributions, value=1.0 - i / 10, intermediate_values={1: 2.0}))
    response = api.post(f"/api/v1/studies/{name}/import", content=path.read_bytes(), headers={**auth(token), **SQLITE})
    assert response.status_code == 200, response.text
    assert (response.json()["carried"], response.json()["left_out"]) == (2, 1)
    trials = api.get(f"/api/v1/studies/{name}/trials", headers=auth(token)).json()["trials"]
    assert [(t["params"]["lr"], t["carried_from"]) for t in trials] == [(0.01, "import:notebook#0"), (0.3, "import:notebook#1")]
    assert response.json()["best_trial"]["params"]["lr"] == 0.3


def two_studies(path: Path) -> bytes:
    for n in ("a", "b"):
        optuna.create_study(study_name=n, storage=f"sqlite:///{path}")
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "params", "words"),
    [
        (lambda p: b"not a database", {}, "not an SQLite database"),
        (lambda p: b"SQLite format 3\x00" + b"\x00" * 200, {}, "not an Optuna storage"),
        (two_studies, {}, "name one of: a, b"),
        (two_studies, {"from_study": "c"}, "no Optuna study named 'c'"),
        (lambda p: (optuna.create_study(study_name="m", storage=f"sqlite:///{p}", direction="maximize"), p.read_bytes())[1], {}, "optimizes maximize"),
    ],
    ids=["garbage", "damaged", "ambiguous", "missing", "direction"],
)
def test_a_bad_upload_is_a_4xx_and_stores_nothing(api: Any, make_token: Any, team: str, db_url: str, tmp_path: Path, make: Any, params: dict[str, str], words: str) -> None:
    token = make_token(team)
    name = new_study(api, token)
    data = make(tmp_path / "up.db")
    before = sql(db_url, "SELECT (SELECT count(*) FROM hpo_studies), (SELECT count(*) FROM studies), (SELECT count(*) FROM trials)")
    response = api.post(f"/api/v1/studies/{name}/import", params=params, content=data, headers={**auth(token), **SQLITE})
    assert response.status_code in (404, 422), response.text
    assert words in response.json()["detail"], response.json()["detail"]
    response = api.post("/api/v1/studies/import", params={"name": f"{name}-new", **params}, content=data, headers={**auth(token), **SQLITE})
    assert response.status_code in (404, 422), response.text
    assert sql(db_url, "SELECT (SELECT count(*) FROM hpo_studies), (SELECT count(*) FROM studies), (SELECT count(*) FROM trials)") == before


def test_a_file_without_a_definition_cannot_make_a_new_study(api: Any, make_token: Any, team: str, tmp_path: Path) -> None:
    token = make_token(team)
    optuna.create_study(study_name="bare", storage=f"sqlite:///{tmp_path / 'bare.db'}")
    response = api.post("/api/v1/studies/import", params={"name": "from-bare"}, content=(tmp_path / "bare.db").read_bytes(), headers={**auth(token), **SQLITE})
    assert response.status_code == 422 and "create the study first" in response.json()["detail"]


def test_an_admin_imports_a_notebooks_study_from_the_database_but_not_another_teams(api: Any, make_token: Any, team: str, db_url: str) -> None:
    admin = make_token(team)
    name = new_study(api, admin)
    notebook = f"notebook-{uuid.uuid4().hex[:6]}"
    study = optuna.create_study(study_name=notebook, storage=db_url)
    study.enqueue_trial({"lr": 0.02, "optimizer": "sgd"})
    study.optimize(lambda t: t.suggest_float("lr", 1e-5, 1.0, log=True) + len(t.suggest_categorical("optimizer", ["sgd", "adam"])), n_trials=3)
    url = f"/api/v1/studies/{name}/import/database"
    assert api.post(url, json={"optuna_study": notebook}, headers=auth(make_token(team, "member"))).status_code == 403
    response = api.post(url, json={"optuna_study": notebook}, headers=auth(admin))
    assert response.status_code == 200, response.text
    assert response.json()["carried"] == 3

    other = f"t{uuid.uuid4().hex[:10]}"
    other_admin = make_token(other)
    theirs = new_study(api, other_admin)
    response = api.post(url, json={"optuna_study": f"{other}/{theirs}"}, headers=auth(admin))
    assert response.status_code == 404 and response.json()["error"] == "not_found"
