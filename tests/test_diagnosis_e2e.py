"""The learning-rate extremes through a real server and a real worker: lr 10 with sgd is stopped
as `diverged` inside its first epoch; lr 1e-6 is diagnosed `too_slow`; the study says why."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer, digits_definition, start_worker


def fixed_lr_study(name: str, lr: float, epochs: int) -> dict[str, Any]:
    return digits_definition(
        name,
        workload={
            "model": "mlp",
            "dataset": "digits",
            "epochs": epochs,
            "optimizer": "sgd",
            "lr": lr,
            "hidden_size": 32,
            "n_layers": 1,
            "batch_size": 32,
        },
        # Something to sample, so each trial is a distinct draw.
        space={"dropout": {"type": "float", "low": 0.2, "high": 0.5}},
        pruner={"kind": "none"},
        budget={"n_trials": 2, "max_concurrent": 1},
    )


def run_study(live_server: LiveServer, token: str, definition: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    name = definition["name"]
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=definition).status_code == 201
        worker = start_worker(live_server.url, token, "--study", name, "--max-trials", "2", "--exit-when-idle", "5")
        try:
            assert worker.wait(timeout=240) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        return c.get(f"/api/v1/studies/{name}/trials").json()["trials"], c.get(f"/api/v1/studies/{name}").json()


def test_lr_ten_is_pruned_as_diverged_within_the_first_epoch(live_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    trials, summary = run_study(live_server, token, fixed_lr_study("lr-ten", 10.0, epochs=20))
    assert len(trials) == 2
    for t in trials:
        assert t["state"] == "PRUNED", t
        assert t["reason"] == "diverged" and t["diagnosis"] == "diverged"
        assert "epoch 1" in t["error"], t["error"]
        # Stopped inside epoch 1: not a single epoch was reported.
        assert t["intermediate_values"] == {}
    assert summary["diagnosis"]["counts"]["diverged"] == 2
    assert any("fixed lr 10" in h and "too high" in h for h in summary["diagnosis"]["hints"])


def test_lr_one_in_a_million_is_too_slow(live_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    trials, summary = run_study(live_server, token, fixed_lr_study("lr-tiny", 1e-6, epochs=4))
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(t["diagnosis"] == "too_slow" for t in trials), [t["diagnosis"] for t in trials]
    assert len(trials[0]["intermediate_values"]) == 4
    assert summary["diagnosis"]["counts"]["too_slow"] == 2
    assert any("too slow" in h and "raise it" in h for h in summary["diagnosis"]["hints"])
