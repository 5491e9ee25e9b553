"""Multi-objective studies through the API against the real PostgreSQL: the definition's checks,
the values Optuna stores for each finish, and `hpo best` printing the Pareto front."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import yaml

from tests.conftest import LiveServer, auth, digits_definition, start_worker
from tests.test_cli_studies import flags, hpo, isolated  # noqa: F401 - the fixtures, reused
from tests.test_lifecycle import claim, new_study
from tests.test_user_workloads import importable_tests, trials_of, wait_exit  # noqa: F401 - a fixture, reused

TWO = [{"name": "val_loss"}, {"name": "params_m"}]


def finish(api: Any, token: str, name: str, state: str, value: float | None, metrics: dict[str, float] | None) -> dict[str, Any]:
    a = claim(api, token, name)
    assert a is not None
    body = {"lease_id": a["lease_id"], "state": state, "value": value, "metrics": metrics}
    response = api.post(f"/api/v1/trials/{a['trial_id']}/finish", json=body, headers=auth(token))
    assert response.status_code == 200, response.text
    return {**a, "answer": response.json()["state"]}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"pruner": {"kind": "median"}}, "pruner.kind: Optuna cannot prune a multi-objective study"),
        ({"pruner": {"kind": "none"}, "sampler": {"kind": "cmaes"}}, "sampler.kind: CMA-ES optimizes one objective"),
        ({"pruner": {"kind": "none"}, "objectives": [{"name": "val_loss"}, {"name": "latency"}]}, "objectives.1.name: 'latency'"),
        ({"pruner": {"kind": "none"}, "objectives": [{"name": "params_m"}, {"name": "params_m"}]}, "names must be unique"),
        ({"pruner": {"kind": "none"}, "objectives": [{"name": "val_loss", "direction": "maximize"}, {"name": "params_m"}]}, "objectives.0.direction"),
        ({"pruner": {"kind": "none"}, "objectives": [{"name": "val_loss"}]}, "objectives"),
    ],
    ids=["pruner", "cmaes", "unknown", "duplicate", "direction", "one"],
)
def test_a_bad_multi_objective_definition_is_422(api: Any, make_token: Any, team: str, change: dict[str, Any], words: str) -> None:
    token = make_token(team)
    definition = {**digits_definition("bad-mo", objectives=TWO), **change}
    response = api.post("/api/v1/studies", json=definition, headers=auth(token))
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert api.get("/api/v1/studies", headers=auth(token)).json() == {"studies": []}


def test_each_finish_stores_every_objective(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    name = f"mo-{team}"
    definition = digits_definition(name, objectives=[{"name": "val_loss"}, {"name": "val_accuracy", "direction": "maximize"}])
    definition.pop("pruner")  # a multi-objective study prunes nothing unless told otherwise (it cannot)
    assert api.post("/api/v1/studies", json=definition, headers=auth(token)).status_code == 201
    stored = api.get(f"/api/v1/studies/{name}", headers=auth(token)).json()
    assert stored["definition"]["pruner"] == {"kind": "none"} and stored["directions"] == ["minimize", "maximize"]

    finish(api, token, name, "complete", 0.3, {"val_accuracy": 0.9})
    finish(api, token, name, "complete", 0.2, {"val_accuracy": 0.8})
    lacking = finish(api, token, name, "complete", 0.1, {"train_loss": 0.1})
    finish(api, token, name, "pruned", None, None)
    assert lacking["answer"] == "failed"

    study = optuna.load_study(study_name=f"{team}/{name}", storage=db_url)
    assert [o.name for o in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert [t.values for t in study.trials] == [[0.3, 0.9], [0.2, 0.8], None, None]
    trials = api.get(f"/api/v1/studies/{name}/trials", headers=auth(token)).json()["trials"]
    assert "objective 'val_accuracy' was not reported" in trials[2]["error"]
    assert [t["value"] for t in trials] == [None] * 4 and trials[0]["values"] == [0.3, 0.9]
    summary = api.get(f"/api/v1/studies/{name}", headers=auth(token)).json()
    assert [t["number"] for t in summary["best_trials"]] == [0, 1]  # neither beats the other on both
    for kind in ("history", "importance"):
        response = api.get(f"/api/v1/studies/{name}/plots/{kind}", headers=auth(token))
        assert response.status_code == 409, response.text
        assert "several" in response.json()["detail"], response.json()["detail"]
    assert "Pareto front" in api.get(f"/api/v1/studies/{name}/report", headers=auth(token)).text


def test_a_plugins_objectives_come_from_its_metrics(api: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    name = new_study(
        api,
        token,
        workload={"model": "plugin", "entry": "tests.plugins:quadratic"},
        space={"x": {"type": "float", "low": -1.0, "high": 1.0}},
        objectives=[{"name": "error"}, {"name": "latency", "direction": "minimize"}],
        pruner={"kind": "none"},
    )
    finish(api, token, name, "complete", None, {"error": 0.5, "latency": 3.0})
    assert optuna.load_study(study_name=f"{team}/{name}", storage=db_url).trials[0].values == [0.5, 3.0]


def test_hpo_best_prints_the_front(live_server: LiveServer, flags: tuple[str, ...]) -> None:
    with live_server.client(flags[-1]) as c:
        definition = digits_definition("front", objectives=TWO, pruner={"kind": "none"})
        assert c.post("/api/v1/studies", json=definition).status_code == 201
        for value, size in ((0.5, 0.01), (0.4, 0.02), (0.6, 0.03)):
            a = c.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": ["front"]}).json()
            body = {"lease_id": a["lease_id"], "state": "complete", "value": value, "metrics": {"params_m": size}}
            assert c.post(f"/api/v1/trials/{a['trial_id']}/finish", json=body).status_code == 200
    result = hpo("best", "front", *flags)
    assert result.exit_code == 0, result.output
    front = yaml.safe_load(result.stdout)
    assert [(t["number"], t["values"]) for t in front] == [(0, {"val_loss": 0.5, "params_m": 0.01}), (1, {"val_loss": 0.4, "params_m": 0.02})]


def test_a_plugin_gives_its_objectives_by_name_on_a_real_worker(live_server: LiveServer, make_token: Any, team: str, db_url: str, importable_tests: None) -> None:
    token = make_token(team)
    definition = {
        **digits_definition("plugin-mo", pruner={"kind": "none"}, budget={"n_trials": 2, "max_concurrent": 1}),
        "workload": {"model": "plugin", "entry": "tests.plugins:two_objectives"},
        "space": {"x": {"type": "float", "low": -2.0, "high": 2.0}},
        "objectives": [{"name": "error"}, {"name": "size"}],
    }
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=definition).status_code == 201, "created"
        worker = start_worker(live_server.url, token, "--max-trials", "2", "--allow-plugin", "tests.plugins:*")
        assert wait_exit(worker) == 0
        trials = trials_of(c, "plugin-mo")
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        x = t["params"]["x"]
        assert t["values"] == pytest.approx([(x - 1.0) ** 2, abs(x)])


def test_old_checkpoints_go_except_the_pareto_fronts(api: Any, make_token: Any, team: str) -> None:
    """The checkpoint tidy keeps a multi-objective study's front, where a single-objective one
    keeps its best trial (Optuna has no single best trial there: it raised, and the tidy with it)."""
    from service.engine import checkpoints
    from tests.test_lineage import checkpoint

    token = make_token(team)
    name = new_study(api, token, objectives=TWO, pruner={"kind": "none"}, budget={"n_trials": 3, "max_concurrent": 3})
    claimed = [claim(api, token, name) for _ in range(3)]
    for a, (loss, size) in zip(claimed, ((0.3, 0.01), (0.2, 0.02), (0.4, 0.03))):  # the last is dominated
        assert a is not None and checkpoint(api, token, a, 1, loss, b"weights").status_code == 200
        body = {"lease_id": a["lease_id"], "state": "complete", "value": loss, "metrics": {"params_m": size}}
        assert api.post(f"/api/v1/trials/{a['trial_id']}/finish", json=body, headers=auth(token)).status_code == 200
    runtime = api.app.state.runtime
    with runtime.sessions.begin() as session:
        checkpoints.tidy(session, runtime.storage, runtime.state.views, runtime.store, runtime.settings.model_copy(update={"checkpoint_retention_seconds": 0}))
    from service.db.models import Checkpoint

    with runtime.sessions.begin() as session:
        kept = {row.trial_id for row in session.query(Checkpoint).filter(Checkpoint.trial_id.in_([a["trial_id"] for a in claimed]))}
    assert kept == {claimed[0]["trial_id"], claimed[1]["trial_id"]}
