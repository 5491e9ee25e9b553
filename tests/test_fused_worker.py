"""`hpo worker --fuse 4` against a real server: each member is its own trial with its own curve
and pruning, and a SIGKILL mid-group retries every member from its checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import BIN, LiveServer, digits_definition, wait_for
from tests.test_worker_crash import acked_steps, crash_server

LINE = re.compile(r"trial (\S+)#(\d+) params=.* outcome=(\w+)(?: \((\w+)\))? value=\S+ epochs=(\d+) time=\S+ fused")


def start_worker(server: LiveServer, token: str, worker_id: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN / "hpo"), "worker", "--server", server.url, "--token", token, "--threads", "1",
             "--worker-id", worker_id, "--fuse", "4", *args],
            env={**os.environ, "HPO_ACK_LOG": str(log.parent / f"ack-{worker_id}.jsonl")},
            stderr=out,
        )


def fused_lines(log: Path) -> dict[int, tuple[str, str | None, int]]:
    """Trial number -> (outcome, reason, epochs) from the worker's fused one-line-per-trial log."""
    return {int(m[2]): (m[3], m[4], int(m[5])) for m in LINE.finditer(log.read_text())}


def run_study(
    server: LiveServer, token: str, definition: dict[str, Any], log: Path, timeout: float, *worker_args: str
) -> list[dict[str, Any]]:
    """Create the study, run one `--fuse 4` worker until the study is finished (within `timeout`
    seconds) and the worker has exited 0; the study's trials. Stops the server."""
    name = definition["name"]
    worker = None
    try:
        with server.client(token) as c:
            assert c.post("/api/v1/studies", json=definition).status_code == 201
            worker = start_worker(server, token, f"fz-{name}", log, "--exit-when-idle", "3", *worker_args)
            wait_for(lambda: c.get(f"/api/v1/studies/{name}").json()["state"] == "finished", timeout, "the study did not finish")
            assert worker.wait(timeout=60) == 0
            return c.get(f"/api/v1/studies/{name}/trials").json()["trials"]
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        server.stop()


def test_a_fused_worker_runs_each_member_as_its_own_trial(db_url: str, make_token: Any, team: str, tmp_path: Path) -> None:
    server = LiveServer(db_url, HPO_HEARTBEAT_SECONDS="1", HPO_LEASE_SECONDS="30", HPO_ARTIFACT_DIR=str(tmp_path / "artifacts"))
    token = make_token(team)
    epochs = 6
    definition = digits_definition(
        "fused",
        workload={"model": "mlp", "dataset": "digits", "epochs": epochs, "hidden_size": 32, "n_layers": 1, "batch_size": 32},
        space={
            "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        },
        sampler={"kind": "random", "seed": 3},
        pruner={"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
        budget={"n_trials": 12, "max_concurrent": 4},
    )
    log = tmp_path / "worker.log"
    trials = run_study(server, token, definition, log, 300)

    assert len(trials) == 12 and {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    lines = fused_lines(log)
    assert set(lines) == {t["number"] for t in trials}, log.read_text()[-3000:]  # every trial trained fused
    curves = set()
    for t in trials:
        steps = sorted(int(s) for s in t["intermediate_values"])
        outcome, reason, trained = lines[t["number"]]
        # Its own curve: every epoch it trained, reported once, in order.
        assert steps == list(range(1, trained + 1)), (t["number"], steps, lines[t["number"]])
        curves.add(tuple(t["intermediate_values"][str(s)] for s in steps))
        if t["state"] == "COMPLETE":
            assert outcome == "complete" and trained == epochs
        else:
            # Pruned members stop at once: the epoch the pruner said stop at (the last report) is
            # the last one the member trained, and the worker ended it as pruned.
            assert outcome == "pruned"
    assert len(curves) == 12  # no two members share a curve
    early = [t for t in trials if t["state"] == "PRUNED" and len(t["intermediate_values"]) < epochs]
    assert early, "nothing was pruned early: the test would not see pruned members leave the group"


def test_sigkill_mid_group_retries_every_member_from_its_checkpoint(
    db_url: str, make_token: Any, team: str, tmp_path: Path
) -> None:
    server = crash_server(db_url, tmp_path)
    token = make_token(team)
    epochs = 10
    definition = digits_definition(
        "fused-kill",
        workload={"model": "mlp", "dataset": "digits", "epochs": epochs, "hidden_size": 32, "n_layers": 1, "batch_size": 16},
        space={
            "lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
        },
        pruner={"kind": "none"},
        budget={"n_trials": 4, "max_concurrent": 4, "max_retries": 1},
    )
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with server.client(token) as c:
            assert c.post("/api/v1/studies", json=definition).status_code == 201
            workers.append(start_worker(server, token, "fz-1", first_log))

            def started() -> list[dict[str, Any]]:
                return [t for t in c.get("/api/v1/studies/fused-kill/trials").json()["trials"] if len(t["intermediate_values"]) >= 2]

            wait_for(lambda: len(started()) == 4, 180, "the group never got 2 epochs in")
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(timeout=10)
            workers.append(start_worker(server, token, "fz-2", second_log, "--exit-when-idle", "8"))
            wait_for(lambda: c.get("/api/v1/studies/fused-kill").json()["state"] == "finished", 300, "the study did not finish")
            assert workers[1].wait(timeout=60) == 0
            trials = c.get("/api/v1/studies/fused-kill/trials").json()["trials"]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        server.stop()

    lost = [t for t in trials if t["state"] == "FAIL"]
    retries = [t for t in trials if t["retry_of"] is not None]
    assert len(lost) == 4 and len(retries) == 4, [(t["number"], t["state"], t["retry_of"]) for t in trials]
    assert {t["reason"] for t in lost} == {"lease_lost"}
    by_number = {t["number"]: t for t in trials}
    for retry in retries:
        dead = by_number[retry["retry_of"]]
        assert retry["state"] == "COMPLETE" and retry["attempt"] == 2 and retry["params"] == dead["params"]
        # Resumed, not restarted: the curve continues the lost one's, with no gap and no repeat.
        assert [int(s) for s in retry["intermediate_values"]] == list(range(1, epochs + 1))
        inherited = {s: v for s, v in dead["intermediate_values"].items()}
        assert {s: retry["intermediate_values"][s] for s in inherited} == inherited
        # Its first report is the step after its checkpoint: the earlier epochs were not trained again.
        assert acked_steps(tmp_path, retry["trial_id"]) == list(range(max(map(int, inherited)) + 1, epochs + 1))
    second = second_log.read_text()
    resumed = re.findall(r"resumed trial #(\d+) .* from step (\d+) in a fused group", second)
    assert {int(n) for n, _ in resumed} == {t["number"] for t in retries}, second[-3000:]
    # Each retry trained fused again.
    assert set(fused_lines(second_log)) == {t["number"] for t in retries}


def test_a_group_that_cannot_start_fails_every_member_with_the_reason(
    db_url: str, make_token: Any, team: str, tmp_path: Path
) -> None:
    # The data cannot be read: the group's training fails before any member has joined it.
    server = LiveServer(db_url, HPO_HEARTBEAT_SECONDS="1", HPO_LEASE_SECONDS="30")
    token = make_token(team)
    definition = digits_definition(
        "fused-nodata",
        workload={"model": "mlp", "dataset": {"kind": "npz", "path": "missing.npz"}, "epochs": 2},
        space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        budget={"n_trials": 4, "max_concurrent": 4, "max_retries": 0},
    )
    # Finished by the worker at once (within 25 s), not left to their leases (30 s) and the reaper.
    trials = run_study(server, token, definition, tmp_path / "worker.log", 25, "--data-root", str(tmp_path))
    assert len(trials) == 4
    assert {(t["state"], t["reason"]) for t in trials} == {("FAIL", "data")}, [(t["state"], t["reason"], t["error"]) for t in trials]
