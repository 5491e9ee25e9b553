"""LR sensitivity end to end, with a real server and real `hpo worker` processes on digits:
an lr sweep's U-curve, the LR range test against the sweep's divergence point, and
auto_lr_range narrowing a study's lr distribution before its trials."""

from __future__ import annotations

import math
from typing import Any

import httpx

from tests.conftest import LiveServer, finish_with_workers, start_worker


def run_until_finished(c: httpx.Client, live_server: LiveServer, token: str, names: list[str], workers: int = 2) -> None:
    procs = [start_worker(live_server.url, token, "--worker-id", f"lr-{i}", "--exit-when-idle", "3") for i in range(workers)]
    finish_with_workers(c, procs, names, 600)


def sweep(name: str, optimizer: str, low: float, high: float, per_decade: int, epochs: int) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "lr_sweep",
        # Batch 16 for 10 epochs (sgd has momentum 0.9 by default): large lrs overshoot on digits,
        # so the curve turns up again inside 1e-1.
        "workload": {"model": "mlp", "dataset": "digits", "epochs": epochs, "optimizer": optimizer, "batch_size": 16},
        "sweep": {"low": low, "high": high, "points_per_decade": per_decade},
        "budget": {"max_concurrent": 4},
    }


def test_sgd_sweep_is_u_shaped_and_the_adam_range_test_finds_the_cliff(
    live_server: LiveServer, make_token: Any, team: str
) -> None:
    token = make_token(team)
    finder = {
        "name": "adam-finder",
        "kind": "lr_finder",
        "workload": {"model": "mlp", "dataset": "digits", "optimizer": "adam", "batch_size": 16},
    }
    with live_server.client(token) as c:
        created = c.post("/api/v1/studies", json=sweep("sgd-sweep", "sgd", 1e-5, 1e-1, 5, 10))
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["kind"] == "lr_sweep" and body["n_trials"] == 21
        assert body["definition"]["pruner"]["kind"] == "none"  # the whole curve is the point
        assert c.post("/api/v1/studies", json=sweep("adam-sweep", "adam", 1e-4, 1.0, 3, 5)).status_code == 201
        assert c.post("/api/v1/studies", json=finder).status_code == 201
        run_until_finished(c, live_server, token, ["sgd-sweep", "adam-sweep", "adam-finder"])

        sgd = c.get("/api/v1/studies/sgd-sweep").json()["lr_sweep"]
        adam = c.get("/api/v1/studies/adam-sweep").json()["lr_sweep"]
        found = c.get("/api/v1/studies/adam-finder").json()["lr_finder"]
        trials = c.get("/api/v1/studies/sgd-sweep/trials").json()["trials"]

    points = sgd["points"]
    # The figures the README quotes (pytest -s shows them).
    print(f"sgd sweep: best lr {sgd['best_lr']} value {sgd['best_value']:.4f}, ends {points[0]['mean']}, {points[-1]['mean']}")
    print(f"adam sweep divergence_lr {adam['divergence_lr']}; range test suggestion {found['suggestion']}")
    # Every grid point ran once, and no trial was pruned.
    lrs = sorted(t["params"]["lr"] for t in trials)
    assert len(lrs) == 21 and math.isclose(lrs[0], 1e-5) and math.isclose(lrs[-1], 1e-1)
    assert all(t["state"] in ("COMPLETE",) or t["reason"] == "diverged" for t in trials), [(t["state"], t["reason"]) for t in trials]
    # The U-curve: the best lr is inside the grid, worse on both sides.
    assert sgd["interior"] is True, points
    assert 1e-5 < sgd["best_lr"] < 1e-1
    assert points[0]["mean"] > sgd["best_value"] and (points[-1]["mean"] is None or points[-1]["mean"] > sgd["best_value"])
    lo, hi = sgd["range"]
    assert lo <= sgd["best_lr"] <= hi

    # The range test: a curve that falls then blows up, and an upper bound within an order of
    # magnitude of where the Adam sweep starts to diverge.
    assert found["state"] == "complete" and len(found["lrs"]) >= 20
    assert found["lrs"] == sorted(found["lrs"]) and found["lrs"][0] == 1e-7
    suggestion = found["suggestion"]
    assert suggestion["low"] < suggestion["high"]
    assert adam["divergence_lr"] is not None, adam["points"]
    ratio = suggestion["high"] / adam["divergence_lr"]
    assert 0.1 <= ratio <= 10, (suggestion, adam["divergence_lr"])


def test_auto_lr_range_narrows_before_any_regular_trial(live_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    definition = {
        "name": "auto",
        "auto_lr_range": True,
        "workload": {"model": "mlp", "dataset": "digits", "epochs": 2, "optimizer": "adam"},
        "space": {
            "lr": {"type": "float", "low": 1e-6, "high": 1.0, "log": True},
            "batch_size": {"type": "int", "low": 16, "high": 64, "log": True},
        },
        "sampler": {"kind": "random", "seed": 3},
        "pruner": {"kind": "none"},
        "budget": {"n_trials": 6, "max_concurrent": 3},
    }
    with live_server.client(token) as c:
        created = c.post("/api/v1/studies", json=definition)
        assert created.status_code == 201, created.text
        assert created.json()["lr_range"]["status"] == "pending"
        names = {s["name"] for s in c.get("/api/v1/studies").json()["studies"]}
        assert {"auto", "auto-lr-finder"} <= names
        run_until_finished(c, live_server, token, ["auto-lr-finder", "auto"], workers=2)
        study = c.get("/api/v1/studies/auto").json()
        trials = c.get("/api/v1/studies/auto/trials").json()["trials"]
        finder_trials = c.get("/api/v1/studies/auto-lr-finder/trials").json()["trials"]

    lr_range = study["lr_range"]
    print(f"auto_lr_range: {lr_range}")
    assert lr_range["status"] == "narrowed", lr_range
    assert lr_range["original"] == [1e-6, 1.0]
    low, high = lr_range["narrowed"]
    assert 1e-6 <= low < high <= 1.0 and (low, high) != (1e-6, 1.0)
    # Every regular trial sampled inside the narrowed range, from the narrowed distribution.
    assert len(trials) == 6
    for t in trials:
        assert low <= t["params"]["lr"] <= high, (t["params"], lr_range)
        assert t["distributions"]["lr"]["attributes"]["low"] == low
        assert t["distributions"]["lr"]["attributes"]["high"] == high
    # The range test ran first: it finished before the first regular trial started.
    assert len(finder_trials) == 1
    first_regular = min(t["datetime_start"] for t in trials)
    assert finder_trials[0]["datetime_complete"] <= first_regular
