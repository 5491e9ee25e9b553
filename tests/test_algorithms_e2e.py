"""GP, NSGA-II and the pruners Optuna judges itself, each in a small study that real `hpo worker`
processes train to the end against a real server: one worker pool for all of them at once."""

from __future__ import annotations

import io
from typing import Any

import optuna
from PIL import Image

from tests.conftest import LiveServer, digits_definition, finish_with_workers, start_worker

SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.2, "high": 0.5},
}
WORKLOAD = {"model": "mlp", "dataset": "digits", "epochs": 3, "hidden_size": 16, "n_layers": 1}


def study(name: str, n_trials: int, **overrides: Any) -> dict[str, Any]:
    return digits_definition(
        name,
        **{"workload": WORKLOAD, "space": SPACE, "sampler": {"kind": "random", "seed": 0}, "pruner": {"kind": "none"}, **overrides},
        budget={"n_trials": n_trials, "max_concurrent": 2},
    )


STUDIES = {
    "gp": study("gp", 5, sampler={"kind": "gp", "seed": 0, "n_startup_trials": 2}),
    "nsga2": study("nsga2", 6, sampler={"kind": "nsga2", "seed": 0, "population_size": 2}),
    "halving": study("halving", 6, pruner={"kind": "successive_halving", "min_resource": 1, "reduction_factor": 2}),
    "hyperband": study("hyperband", 6, pruner={"kind": "hyperband", "min_resource": 1, "max_resource": 3, "reduction_factor": 2}),
    # No validation loss is below 0: each trial is pruned at its first epoch.
    "threshold": study("threshold", 3, pruner={"kind": "threshold", "upper": 0.0}),
    # Maximizing the validation loss, which falls from the first epoch to the second for these
    # (seeded) params: no improvement, so each trial is pruned at its second epoch.
    "patience": study("patience", 3, direction="maximize", pruner={"kind": "patience", "patience": 0}),
    # The built-in worker's params_m: a 64-wide hidden layer (0.0048 M) breaks the bound, 16 (0.0012 M) keeps it.
    "constrained": study(
        "constrained",
        4,
        workload={**{k: v for k, v in WORKLOAD.items() if k != "hidden_size"}},
        space={**SPACE, "hidden_size": {"type": "categorical", "choices": [16, 64]}},
        sampler={"kind": "tpe", "seed": 0, "n_startup_trials": 2},
        constraints=[{"metric": "params_m", "max": 0.002}],
    ),
    # Two objectives over the mlp's width and depth: the validation loss and the model's size.
    "pareto": study(
        "pareto",
        6,
        workload={k: v for k, v in WORKLOAD.items() if k not in ("hidden_size", "n_layers")},
        space={**SPACE, "hidden_size": {"type": "categorical", "choices": [8, 16, 64]}, "n_layers": {"type": "int", "low": 1, "high": 2}},
        sampler={"kind": "nsga2", "seed": 0, "population_size": 4},
        objectives=[{"name": "val_loss"}, {"name": "params_m"}],
    ),
}


def test_gp_nsga2_and_optunas_pruners_run_on_real_workers(live_server: LiveServer, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    with live_server.client(token) as c:
        for definition in STUDIES.values():
            response = c.post("/api/v1/studies", json=definition)
            assert response.status_code == 201, response.text
        workers = [start_worker(live_server.url, token, "--worker-id", f"algo-{i}", "--exit-when-idle", "3") for i in range(2)]
        finish_with_workers(c, workers, list(STUDIES), 600)
        trials = {name: c.get(f"/api/v1/studies/{name}/trials").json()["trials"] for name in STUDIES}

    for name, definition in STUDIES.items():
        states = [t["state"] for t in trials[name]]
        assert len(states) == definition["budget"]["n_trials"], (name, states)
        assert "FAIL" not in states, (name, trials[name])
    assert [len(t["intermediate_values"]) for t in trials["threshold"]] == [1, 1, 1]
    assert {t["state"] for t in trials["threshold"]} == {"PRUNED"}
    assert [len(t["intermediate_values"]) for t in trials["patience"]] == [2, 2, 2]
    assert {t["state"] for t in trials["patience"]} == {"PRUNED"}

    # What optuna-dashboard reads. NSGA-II kept its generations across claims in the trials
    # (rebuilt per claim, it still counts on); GP sampled inside the space after its start-up.
    nsga = optuna.load_study(study_name=f"{team}/nsga2", storage=db_url)
    generations = sorted(t.system_attrs["NSGAIISampler:generation"] for t in nsga.trials)
    assert generations[0] == 0 and generations[-1] >= 1, generations
    gp = optuna.load_study(study_name=f"{team}/gp", storage=db_url)
    assert all(1e-3 <= t.params["lr"] <= 1e-1 for t in gp.trials)
    assert gp.best_value is not None

    # The constrained study: every trial judged by the worker's params_m; the best keeps the bound.
    constrained = {t["number"]: t for t in trials["constrained"]}
    assert all(t["feasible"] == (t["params"]["hidden_size"] == 16) for t in constrained.values()), [(t["params"], t["metrics"], t["constraints"], t["feasible"]) for t in constrained.values()]
    assert all(0.001 < t["metrics"]["params_m"] < 0.005 for t in constrained.values())
    best = optuna.load_study(study_name=f"{team}/constrained", storage=db_url)
    if any(t["feasible"] for t in constrained.values()):
        assert best.best_trial.params["hidden_size"] == 16

    # The two-objective study: the API's Pareto front is Optuna's, and the plot shows it.
    pareto = optuna.load_study(study_name=f"{team}/pareto", storage=db_url)
    with live_server.client(token) as c:
        summary = c.get("/api/v1/studies/pareto").json()
        png = c.get("/api/v1/studies/pareto/plots/pareto")
    theirs = sorted(pareto.best_trials, key=lambda t: t.number)
    assert summary["best_trials"] == [{"number": t.number, "values": t.values, "params": t.params} for t in theirs]
    assert summary["best_trial"] is None and summary["directions"] == ["minimize", "minimize"]
    assert all(len(t["values"]) == 2 and t["values"][1] == t["metrics"]["params_m"] for t in trials["pareto"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).convert("L").getextrema()[0] < 128  # something dark was drawn
