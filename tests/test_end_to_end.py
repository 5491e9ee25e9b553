"""A real uvicorn server and two real `hpo worker` processes run a 16-trial study with median
pruning; optuna.load_study sees what optuna-dashboard would."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import optuna

from tests.conftest import LiveServer, digits_definition, finish_with_workers, start_worker, wait_for


def long_running(name: str) -> dict[str, Any]:
    """One trial of many epochs: still training whenever the test acts."""
    return digits_definition(
        name,
        workload={"model": "mlp", "dataset": "digits", "epochs": 500, "batch_size": 16},
        space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        pruner={"kind": "none"},
        budget={"n_trials": 1, "max_concurrent": 1},
    )


def wait_until_training(c: httpx.Client, name: str) -> None:
    def training() -> bool:
        trials = c.get(f"/api/v1/studies/{name}/trials").json()["trials"]
        return bool(trials) and len(trials[0]["intermediate_values"]) >= 1

    wait_for(training, 120, "the worker never reported an epoch")


def test_sixteen_trials_two_workers(live_server: LiveServer, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    definition = digits_definition(
        "e2e",
        workload={"model": "mlp", "dataset": "digits", "epochs": 4, "hidden_size": 32, "n_layers": 1},
        pruner={"kind": "median", "n_startup_trials": 3, "n_warmup_steps": 0},
        budget={"n_trials": 16, "max_concurrent": 2},
    )
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=definition).status_code == 201
        workers = [start_worker(live_server.url, token, "--worker-id", f"e2e-{i}", "--exit-when-idle", "3") for i in range(2)]
        finish_with_workers(c, workers, ["e2e"], 300)
        summary = c.get("/api/v1/studies/e2e").json()
        trials = c.get("/api/v1/studies/e2e/trials").json()["trials"]

    assert len(trials) == 16
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED", "FAIL"}
    assert any(t["state"] == "PRUNED" for t in trials), [t["state"] for t in trials]
    assert sorted(t["number"] for t in trials) == list(range(16))
    assert {t["worker_id"] for t in trials} == {"e2e-0", "e2e-1"}  # both workers pulled work
    assert summary["counts"]["COMPLETE"] + summary["counts"]["PRUNED"] + summary["counts"]["FAIL"] == 16
    assert summary["best_trial"] is not None

    # What optuna-dashboard reads: the same study, with every epoch's validation loss.
    study = optuna.load_study(study_name=f"{team}/e2e", storage=db_url)
    assert len(study.trials) == 16
    for t in study.trials:
        if t.state.name in ("COMPLETE", "PRUNED"):
            assert t.intermediate_values, t
            assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        if t.state.name == "COMPLETE":
            assert len(t.intermediate_values) == 4
            assert t.value == min(t.intermediate_values.values())  # objective: best val loss
    assert study.best_value == summary["best_trial"]["value"]


def test_sigterm_finishes_the_trial_and_exits_zero(live_server: LiveServer, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=long_running("sigterm")).status_code == 201
        worker = start_worker(live_server.url, token)
        try:
            wait_until_training(c, "sigterm")
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        trial = c.get("/api/v1/studies/sigterm/trials").json()["trials"][0]
    assert trial["state"] == "FAIL"
    assert "signal" in trial["error"]
    assert optuna.load_study(study_name=f"{team}/sigterm", storage=db_url).trials[0].state.name == "FAIL"


def test_a_failing_trial_does_not_kill_the_worker(live_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    # An lr this high diverges to NaN in the first epoch: that trial fails with the reason,
    # and the worker goes on to the next one.
    definition = digits_definition(
        "diverge",
        workload={"model": "mlp", "dataset": "digits", "epochs": 3, "optimizer": "sgd", "momentum": 0.99, "batch_size": 64, "weight_decay": 0.0},
        space={"lr": {"type": "categorical", "choices": [10.0]}},
        pruner={"kind": "none"},
        budget={"n_trials": 2, "max_concurrent": 1},
    )
    with live_server.client(token) as c:
        c.post("/api/v1/studies", json=definition)
        worker = start_worker(live_server.url, token, "--max-trials", "2")
        try:
            assert worker.wait(timeout=120) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        trials = c.get("/api/v1/studies/diverge/trials").json()["trials"]
    # Pruned as diverged inside the first epoch: no GPU time goes to a dead run.
    assert [t["state"] for t in trials] == ["PRUNED", "PRUNED"]
    assert all(t["reason"] == "diverged" and "epoch 1" in t["error"] for t in trials)
    assert httpx.get(f"{live_server.url}/healthz").status_code == 200


def test_an_exception_in_a_trial_fails_that_trial_only(
    live_server: LiveServer, make_token: Any, team: str, monkeypatch: Any
) -> None:
    import worker.trainer
    from worker.client import ServiceClient
    from worker.runner import Runner

    calls = []

    def broken(workload: Any, hp: Any, device: Any) -> Any:
        calls.append(hp)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
        yield  # a generator, like the real trainer

    monkeypatch.setattr(worker.trainer, "train", broken)
    token = make_token(team)
    with live_server.client(token) as c:
        c.post("/api/v1/studies", json=digits_definition("boom", budget={"n_trials": 2, "max_concurrent": 1}))
        client = ServiceClient(live_server.url, token)
        runner = Runner(client=client, worker_id="inproc", device="cpu")
        assert runner.run(max_trials=5, exit_when_idle=0.5) == 2
        client.close()
        trials = c.get("/api/v1/studies/boom/trials").json()["trials"]
    assert len(calls) == 2
    assert [t["state"] for t in trials] == ["FAIL", "FAIL"]
    assert all("illegal memory access" in t["error"] for t in trials)


def test_deleting_a_study_mid_trial_lets_the_worker_move_on(live_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=long_running("doomed")).status_code == 201
        worker = start_worker(live_server.url, token, "--exit-when-idle", "4")
        try:
            wait_until_training(c, "doomed")
            assert c.delete("/api/v1/studies/doomed").status_code == 204
            # The same worker picks up the next study's work once the deleted one answers 404.
            c.post("/api/v1/studies", json=digits_definition("next", budget={"n_trials": 2, "max_concurrent": 1}))
            assert worker.wait(timeout=120) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        trials = c.get("/api/v1/studies/next/trials").json()["trials"]
    assert len(trials) == 2 and all(t["state"] in ("COMPLETE", "PRUNED") for t in trials), trials
