"""A worker SIGKILLed mid-trial loses nothing: the reaper fails its trial from the stale
heartbeat, the retry resumes from the last checkpoint, and the study ends with exactly its
budget of lineages, none RUNNING."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import optuna

from tests.conftest import BIN, LiveServer, digits_definition, wait_for


def start_worker(server: LiveServer, token: str, worker_id: str, ack_log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "hpo"), "worker", "--server", server.url, "--token", token, "--threads", "1",
         "--worker-id", worker_id, "--exit-when-idle", "8"],
        env={**os.environ, "HPO_ACK_LOG": str(ack_log)},
    )


def acked_steps(logs: Path, trial_id: int) -> list[int]:
    """The steps the service acknowledged for a trial, in the order the worker sent them."""
    steps = []
    for log in sorted(logs.glob("ack-*.jsonl")):
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by the SIGKILL
            if entry["trial_id"] == trial_id:
                steps.append(entry["step"])
    return steps


def crash_server(db_url: str, tmp_path: Path) -> LiveServer:
    """A server that notices a silent worker within seconds: 4 s leases, the reaper every second."""
    return LiveServer(
        db_url,
        HPO_LEASE_SECONDS="4",
        HPO_HEARTBEAT_SECONDS="1",
        HPO_REAPER_SECONDS="1",
        HPO_ARTIFACT_DIR=str(tmp_path / "artifacts"),
    )


def test_sigkill_mid_trial_is_retried_and_resumed(db_url: str, make_token: Any, team: str, tmp_path: Any) -> None:
    server = crash_server(db_url, tmp_path)
    token = make_token(team)
    definition = digits_definition(
        "crash",
        workload={"model": "mlp", "dataset": "digits", "epochs": 12, "hidden_size": 32, "n_layers": 1, "batch_size": 16},
        space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        pruner={"kind": "none"},
        budget={"n_trials": 12, "max_concurrent": 3, "max_retries": 2},
    )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with server.client(token) as c:
            assert c.post("/api/v1/studies", json=definition).status_code == 201
            workers = [start_worker(server, token, f"crash-{i}", tmp_path / f"ack-{i}.jsonl") for i in range(3)]

            def victim() -> dict[str, Any] | None:
                for t in c.get("/api/v1/studies/crash/trials").json()["trials"]:
                    if t["state"] == "RUNNING" and len(t["intermediate_values"]) >= 3 and t["worker_id"] == "crash-0":
                        return t
                return None

            wait_for(lambda: victim() is not None, 180, "crash-0 never got 3 epochs into a trial")
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(timeout=10)
            lost = victim() or {}
            wait_for(lambda: c.get("/api/v1/studies/crash").json()["state"] == "finished", 400, "the study did not finish")
            for w in workers[1:]:
                assert w.wait(timeout=60) == 0
            trials = c.get("/api/v1/studies/crash/trials").json()["trials"]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        server.stop()

    by_number = {t["number"]: t for t in trials}
    killed = [t for t in trials if t["worker_id"] == "crash-0" and t["state"] == "FAIL"]
    assert len(killed) == 1, [(t["number"], t["state"], t["worker_id"]) for t in trials]
    dead = killed[0]
    assert dead["reason"] == "lease_lost"
    retry = next(t for t in trials if t["retry_of"] == dead["number"])
    assert retry["attempt"] == 2 and retry["state"] in ("COMPLETE", "PRUNED") and retry["params"] == dead["params"]
    # Resumed, not restarted: the retry's curve continues the lost trial's with no gap and no
    # repeat, and the lost trial got at least as far as when it was killed.
    assert len(dead["intermediate_values"]) >= len(lost.get("intermediate_values", {}))
    steps = [int(s) for s in retry["intermediate_values"]]
    assert steps == list(range(1, 13))
    inherited = {int(s): v for s, v in dead["intermediate_values"].items()}
    assert {s: retry["intermediate_values"][str(s)] for s in inherited} == inherited
    # The retry's first report is the step after the last checkpoint (= the lost trial's last
    # report, since a checkpoint and its report are one call), and none is sent twice.
    assert acked_steps(tmp_path, retry["trial_id"]) == list(range(max(inherited) + 1, 13))

    states = [t["state"] for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states
    # Exactly 12 lineages, each ending COMPLETE or PRUNED exactly once.
    roots = {t["number"] if t["retry_of"] is None else _root(by_number, t) for t in trials}
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(roots) == 12 and len(finished) == 12
    stored = optuna.load_study(study_name=f"{team}/crash", storage=db_url)
    assert sum(t.state.is_finished() and t.state.name != "FAIL" for t in stored.trials) == 12


def _root(by_number: dict[int, dict[str, Any]], trial: dict[str, Any]) -> int:
    while trial["retry_of"] is not None:
        trial = by_number[trial["retry_of"]]
    return trial["number"]
