"""The study API against the real PostgreSQL: every bad definition is a 4xx that names the field
and changes nothing; duplicates are 409; another team's study is 404."""

from __future__ import annotations

import copy
from typing import Any

import optuna
import psycopg
import pytest
import yaml

from tests.conftest import auth, digits_definition


def stored_state(db_url: str) -> tuple[int, int]:
    """(our study rows, Optuna studies): what a rejected request must leave untouched."""
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        ours = conn.execute("SELECT count(*) FROM hpo_studies").fetchone()[0]
        theirs = conn.execute("SELECT count(*) FROM studies").fetchone()[0]
    return ours, theirs


def with_change(path: str, value: Any) -> dict[str, Any]:
    definition = copy.deepcopy(digits_definition("bad-study"))
    *parents, leaf = path.split(".")
    node: Any = definition
    for key in parents:
        node = node[key]
    node[leaf] = value
    return definition


BAD_DEFINITIONS = [
    # (change, a field path the message must name, words from the allowed range)
    (("space.batch_size", {"type": "int", "low": 1, "high": 2048}), "space.batch_size.high", "1024"),
    (("space.batch_size", {"type": "int", "low": 0, "high": 64}), "space.batch_size.low", "1024"),
    (("workload.batch_size", 4096), "workload.batch_size", "1024"),
    (("space.dropout", {"type": "float", "low": 0.2, "high": 1.0}), "space.dropout.high", "[0, 1)"),
    (("space.dropout", {"type": "float", "low": -0.1, "high": 0.5}), "space.dropout.low", "[0, 1)"),
    (("workload.dropout", 1.0), "workload.dropout", "[0, 1)"),
    (("space.lr", {"type": "float", "low": 0.1, "high": 0.01, "log": True}), "space.lr", "low must be < high"),
    (("space.dropout", {"type": "float", "low": 0.3, "high": 0.3}), "space.dropout", "low must be < high"),
    (("space.weight_decay", {"type": "float", "low": 0.0, "high": 0.01, "log": True}), "space.weight_decay", "low > 0"),
    (("space.lr", {"type": "float", "low": 1e-4, "high": 1.0, "log": True, "step": 0.1}), "space.lr", "log and step"),
    (("space.learning_rate", {"type": "float", "low": 1e-4, "high": 1.0}), "space.learning_rate", "unknown parameter"),
    (("workload.lerning_rate", 0.1), "workload.lerning_rate", "unknown parameter"),
    (("sampler", {"kind": "bayesian"}), "sampler.kind", "tpe"),
    (("pruner", {"kind": "asha"}), "pruner", "median"),
    (("pruner", {"kind": "asha"}), "pruner", "successive_halving"),
    (("sampler", {"kind": "tpe", "group": True, "multivariate": False}), "sampler.tpe.group", "multivariate"),
    (("sampler", {"kind": "tpe", "n_startup_trials": -1}), "sampler.tpe.n_startup_trials", "greater than or equal to 0"),
    (("sampler", {"kind": "random", "multivariate": True}), "sampler.random.multivariate", "Extra inputs"),
    (("sampler", {"kind": "nsga2", "crossover": "magic"}), "sampler.nsga2.crossover", "sbx"),
    (("sampler", {"kind": "nsga2", "population_size": 1}), "sampler.nsga2.population_size", "greater than or equal to 2"),
    (("sampler", {"kind": "nsga3", "mutation_prob": 1.5}), "sampler.nsga3.mutation_prob", "less than or equal to 1"),
    (("sampler", {"kind": "gp", "n_startup_trials": "many"}), "sampler.gp.n_startup_trials", "integer"),
    (("sampler", {"kind": "bruteforce"}), "space.lr", "discrete"),
    (("pruner", {"kind": "hyperband", "bootstrap_count": 2}), "pruner.hyperband.bootstrap_count", "max_resource"),
    (("pruner", {"kind": "hyperband", "min_resource": 5, "max_resource": 2}), "pruner.hyperband.max_resource", "min_resource"),
    (("pruner", {"kind": "successive_halving", "reduction_factor": 1}), "pruner.successive_halving.reduction_factor", "greater than or equal to 2"),
    (("pruner", {"kind": "successive_halving", "bootstrap_count": 1}), "pruner.successive_halving.bootstrap_count", "min_resource"),
    (("pruner", {"kind": "threshold"}), "pruner.threshold", "lower, upper"),
    (("pruner", {"kind": "threshold", "lower": 2.0, "upper": 1.0}), "pruner.threshold.lower", "below upper"),
    (("pruner", {"kind": "patience"}), "pruner.patience.patience", "required"),
    (("pruner", {"kind": "patience", "patience": 1, "wrapped": {"kind": "patience", "patience": 1}}), "pruner.patience.wrapped", "median"),
    (("pruner", {"kind": "percentile", "percentile": 150}), "pruner.percentile.percentile", "less than or equal to 100"),
    (("pruner", {"kind": "percentile"}), "pruner.percentile.percentile", "required"),
    (("budget.n_trials", 0), "budget.n_trials", "greater than or equal to 1"),
    (("space.optimizer", {"type": "categorical", "choices": ["sgd", "lamb"]}), "space.optimizer.choices", "adam"),
    (("name", "Bad Name!"), "name", "pattern"),
    (("workload.dataset", {"kind": "npz", "path": "../../etc/passwd"}), "workload.dataset.npz.path", "leaves the worker's data root"),
    (("workload.dataset", {"kind": "csv", "path": "/etc/passwd", "target": "y"}), "workload.dataset.csv.path", "absolute"),
    (("workload.dataset", "imagenet"), "workload.dataset", "digits"),
    (("workload", {"model": "cnn", "dataset": "iris"}), "workload.dataset", "image-shaped"),
    (("direction", "sideways"), "direction", "minimize"),
]


@pytest.mark.parametrize(("change", "field", "allowed"), BAD_DEFINITIONS, ids=[c[0][0] + "=" + str(c[0][1])[:30] for c in BAD_DEFINITIONS])
def test_bad_definition_is_422_naming_the_field_and_stores_nothing(
    api: Any, make_token: Any, team: str, db_url: str, change: tuple[str, Any], field: str, allowed: str
) -> None:
    token = make_token(team)
    before = stored_state(db_url)
    response = api.post("/api/v1/studies", json=with_change(*change), headers=auth(token))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert field in body["detail"], body["detail"]
    assert allowed in body["detail"], body["detail"]
    assert stored_state(db_url) == before
    assert api.get("/api/v1/studies", headers=auth(token)).json() == {"studies": []}


def test_same_errors_for_yaml_bodies(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    before = stored_state(db_url)
    body = yaml.safe_dump(with_change("space.batch_size", {"type": "int", "low": 1, "high": 2048}))
    response = api.post("/api/v1/studies", content=body, headers={**auth(token), "Content-Type": "application/yaml"})
    assert response.status_code == 422
    assert "space.batch_size.high" in response.json()["detail"]
    for raw in ("name: [unclosed", "- just\n- a list\n"):
        response = api.post("/api/v1/studies", content=raw, headers={**auth(token), "Content-Type": "application/yaml"})
        assert response.status_code == 422 and response.json()["detail"].startswith("body"), response.text
    response = api.post("/api/v1/studies", content="x", headers={**auth(token), "Content-Type": "text/plain"})
    assert response.status_code == 415
    assert stored_state(db_url) == before


def test_create_from_yaml_then_get_list_and_duplicate(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    body = yaml.safe_dump(digits_definition("digits-adam"))
    response = api.post("/api/v1/studies", content=body, headers={**auth(token), "Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["optuna_name"] == f"{team}/digits-adam"
    assert created["state"] == "running"
    assert created["counts"]["COMPLETE"] == 0 and created["best_trial"] is None

    before = stored_state(db_url)
    again = api.post("/api/v1/studies", json=digits_definition("digits-adam"), headers=auth(token))
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    assert stored_state(db_url) == before

    listed = api.get("/api/v1/studies", headers=auth(token)).json()["studies"]
    assert [s["name"] for s in listed] == ["digits-adam"]
    # The study is a real Optuna study under <team>/<name>: what optuna-dashboard reads.
    study = optuna.load_study(study_name=f"{team}/digits-adam", storage=db_url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE


def test_other_teams_study_is_404_and_untouched(api: Any, make_token: Any, team: str, db_url: str) -> None:
    owner, intruder = make_token(team), make_token(team + "x")
    assert api.post("/api/v1/studies", json=digits_definition("private"), headers=auth(owner)).status_code == 201
    for method, path in [
        ("GET", "/api/v1/studies/private"),
        ("GET", "/api/v1/studies/private/trials"),
        ("POST", "/api/v1/studies/private/stop"),
        ("DELETE", "/api/v1/studies/private"),
    ]:
        response = api.request(method, path, headers=auth(intruder))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"] == "not_found"
    assert api.get("/api/v1/studies", headers=auth(intruder)).json() == {"studies": []}
    # The intruder's workers cannot claim the other team's trials either.
    assert api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(intruder)).status_code == 204
    mine = api.get("/api/v1/studies/private", headers=auth(owner)).json()
    assert mine["state"] == "running"
    # The same name is free in another team.
    assert api.post("/api/v1/studies", json=digits_definition("private"), headers=auth(intruder)).status_code == 201


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}])
def test_routes_need_a_valid_token(api: Any, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/api/v1/studies"),
        ("POST", "/api/v1/studies"),
        ("GET", "/api/v1/studies/x"),
        ("POST", "/api/v1/trials/claim"),
        ("POST", "/api/v1/trials/1/report"),
    ]:
        response = api.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == "unauthorized"
    assert api.get("/healthz").status_code == 200


def test_stop_and_delete(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    api.post("/api/v1/studies", json=digits_definition("s1"), headers=auth(token))
    stopped = api.post("/api/v1/studies/s1/stop", headers=auth(token))
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(token)).status_code == 204
    assert api.delete("/api/v1/studies/s1", headers=auth(token)).status_code == 204
    assert api.get("/api/v1/studies/s1", headers=auth(token)).status_code == 404
    assert f"{team}/s1" not in optuna.get_all_study_names(db_url)
    assert api.delete("/api/v1/studies/s1", headers=auth(token)).status_code == 404


def test_openapi_documents_the_definition(api: Any) -> None:
    doc = api.get("/openapi.json").json()
    assert "StudySpec" in doc["components"]["schemas"]
    assert "/api/v1/trials/{trial_id}/report" in doc["paths"]
