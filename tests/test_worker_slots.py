"""Trial slots (`hpo worker --slots N`, worker/slots.py): one worker trains N trials at once in
N slot processes, which share the supervisor's heartbeat and each hold their own lease. Real
`hpo serve` and `hpo worker` processes; no wall-clock assertions."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx

from service.spec import Assignment
from tests.conftest import BIN, LiveServer, digits_definition, wait_for
from worker.slots import NO_TRIAL, SlotConfig, Supervisor, slot_runner


def slot_study(name: str, *, epochs: int, n_trials: int, max_retries: int = 0) -> dict[str, Any]:
    # batch_size 16 makes an epoch slow enough (~100 steps) that trials overlap and outlast a lease.
    return digits_definition(
        name,
        workload={"model": "mlp", "dataset": "digits", "epochs": epochs, "hidden_size": 16, "n_layers": 1, "batch_size": 16},
        space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        pruner={"kind": "none"},
        budget={"n_trials": n_trials, "max_concurrent": 3, "max_retries": max_retries},
    )


def start_slots(url: str, token: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`hpo worker --slots ...` with its log (and its slots' logs) in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(BIN / "hpo"), "worker", "--server", url, "--token", token, "--threads", "1", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )


def slot_pids(log: Path) -> dict[int, list[int]]:
    """Each slot's process ids, in the order the supervisor started them."""
    pids: dict[int, list[int]] = {}
    for slot, pid in re.findall(r"slot (\d+) started: pid (\d+)", log.read_text()):
        pids.setdefault(int(slot), []).append(int(pid))
    return pids


def trials_of(c: httpx.Client, name: str) -> list[dict[str, Any]]:
    return c.get(f"/api/v1/studies/{name}/trials").json()["trials"]


def finished(c: httpx.Client, name: str) -> bool:
    return c.get(f"/api/v1/studies/{name}").json()["state"] == "finished"


def running(c: httpx.Client, name: str, min_epochs: int = 0) -> list[dict[str, Any]]:
    return [t for t in trials_of(c, name) if t["state"] == "RUNNING" and len(t["intermediate_values"]) >= min_epochs]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.kill()  # its slots follow it (PR_SET_PDEATHSIG)
        worker.wait()


def test_three_slots_train_at_once_and_share_one_heartbeat(db_url: str, make_token: Any, team: str, tmp_path: Path) -> None:
    # A short lease, and trials many leases long: without the supervisor's heartbeat every trial
    # would be lost and retried.
    server = LiveServer(db_url, HPO_LEASE_SECONDS="4", HPO_HEARTBEAT_SECONDS="1", HPO_REAPER_SECONDS="1")
    token = make_token(team)
    log = tmp_path / "worker.log"
    worker = None
    at_once: list[set[str]] = []
    try:
        with server.client(token) as c:
            assert c.post("/api/v1/studies", json=slot_study("slots", epochs=80, n_trials=6, max_retries=2)).status_code == 201
            worker = start_slots(server.url, token, log, "--slots", "3", "--worker-id", "box", "--exit-when-idle", "5")

            def three_at_once() -> bool:
                # A trial is RUNNING in Optuna a moment before its claim commits its worker_id.
                ids = {t["worker_id"] for t in running(c, "slots") if t["worker_id"]}
                if len(ids) == 3:
                    at_once.append(ids)
                return bool(at_once)

            wait_for(three_at_once, 300, f"never 3 trials running at once:\n{log.read_text()[-3000:]}")
            wait_for(lambda: finished(c, "slots"), 600, f"the study did not finish:\n{log.read_text()[-3000:]}")
            assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]
            trials = trials_of(c, "slots")
    finally:
        if worker is not None:
            stop(worker)
        server.stop()
    text = log.read_text()
    assert at_once[0] == {"box/slot0", "box/slot1", "box/slot2"}
    # Nothing lost: no trial failed or was retried.
    assert [(t["state"], t["attempt"]) for t in trials] == [("COMPLETE", 1)] * 6, text[-3000:]
    assert {t["worker_id"] for t in trials} <= {"box/slot0", "box/slot1", "box/slot2"}
    assert "lost" not in text
    assert not any(alive(pid) for pids in slot_pids(log).values() for pid in pids)


def test_a_slot_has_no_heartbeat_thread_and_obeys_the_supervisors_verdict(
    live_server: LiveServer, make_token: Any, team: str
) -> None:
    """The slot's side, in this process: it tells the supervisor which lease it holds instead of
    heartbeating itself, and abandons the trial when the supervisor says the lease is lost."""
    import multiprocessing

    token = make_token(team)
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    lost_trial = ctx.Value("q", NO_TRIAL, lock=False)
    config = SlotConfig(server_url=live_server.url, token=token, worker_id="unit", device="cpu", threads=1)
    runner = slot_runner(config, 4, sender, lost_trial)
    assert runner.worker_id == "unit/slot4"
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=slot_study("verdict", epochs=5000, n_trials=1)).status_code == 201
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(runner.run(max_trials=1)), daemon=True)
        thread.start()
        try:
            assert receiver.poll(120), "the slot never told the supervisor about its trial"
            kind, a = receiver.recv()
            assert kind == "hold" and a.lease_id
            wait_for(lambda: running(c, "verdict", min_epochs=1), 120, "the slot never reported an epoch")
            assert not [t.name for t in threading.enumerate() if t.name.startswith("heartbeat-")]
            # Another trial's verdict is not this one's: it trains on.
            lost_trial.value = a.trial_id + 1
            epochs = len(running(c, "verdict")[0]["intermediate_values"])
            wait_for(lambda: running(c, "verdict", min_epochs=epochs + 2), 120, "the slot stopped training")
            lost_trial.value = a.trial_id
            thread.join(timeout=120)
            assert done == [1]
            assert receiver.recv() == ("drop", a.trial_id)
            # Abandoned, not finished: the trial is left to its lease, as with a lost lease.
            (trial,) = trials_of(c, "verdict")
            assert trial["state"] == "RUNNING"
        finally:
            runner.stop.set()
            thread.join(timeout=60)
            runner.client.close()
            c.post("/api/v1/studies/verdict/stop")


def test_the_supervisor_tells_a_slot_when_its_lease_is_lost(live_server: LiveServer, make_token: Any, team: str) -> None:
    """The supervisor's side: it heartbeats the lease a slot holds, and when the service answers
    409 it names that trial in the slot's shared value (and stops heartbeating it)."""
    token = make_token(team)
    config = SlotConfig(server_url=live_server.url, token=token, worker_id="sup", device="cpu", threads=1)
    supervisor = Supervisor(config, 1)
    slot = supervisor.slots[0]
    receiver, sender = supervisor.ctx.Pipe(duplex=False)
    slot.conn = receiver
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=slot_study("fenced", epochs=5, n_trials=1)).status_code == 201
        claimed = c.post("/api/v1/trials/claim", json={"worker_id": "sup/slot0"}).json()
        try:
            # A lease the service no longer knows: the first heartbeat is answered 409.
            sender.send(("hold", Assignment.model_validate({**claimed, "lease_id": "stale"})))
            supervisor._tick()
            assert slot.lease is not None and slot.lease[0] == claimed["trial_id"]
            wait_for(lambda: supervisor._tick() or slot.lost_trial.value == claimed["trial_id"], 60, "no verdict")
            assert slot.lease is None
            # A late "drop" of the abandoned trial changes nothing.
            sender.send(("drop", claimed["trial_id"]))
            supervisor._tick()
            assert slot.lease is None and slot.lost_trial.value == claimed["trial_id"]
        finally:
            supervisor.client.close()
            c.post("/api/v1/studies/fenced/stop")


def test_a_killed_slot_is_restarted_and_its_trial_retried(db_url: str, make_token: Any, team: str, tmp_path: Path) -> None:
    server = LiveServer(db_url, HPO_LEASE_SECONDS="4", HPO_HEARTBEAT_SECONDS="1", HPO_REAPER_SECONDS="1")
    token = make_token(team)
    log = tmp_path / "worker.log"
    worker = None
    try:
        with server.client(token) as c:
            assert c.post("/api/v1/studies", json=slot_study("kill", epochs=100, n_trials=6, max_retries=2)).status_code == 201
            worker = start_slots(server.url, token, log, "--slots", "3", "--worker-id", "k", "--exit-when-idle", "8")

            def victim() -> dict[str, Any] | None:
                return next((t for t in running(c, "kill", min_epochs=2) if t["worker_id"] == "k/slot1"), None)

            wait_for(lambda: victim() is not None, 300, f"slot 1 never got 2 epochs into a trial:\n{log.read_text()[-3000:]}")
            lost = victim()
            assert lost is not None
            os.kill(slot_pids(log)[1][0], signal.SIGKILL)
            wait_for(lambda: finished(c, "kill"), 600, f"the study did not finish:\n{log.read_text()[-3000:]}")
            assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]
            trials = trials_of(c, "kill")
    finally:
        if worker is not None:
            stop(worker)
        server.stop()
    text = log.read_text()
    assert len(slot_pids(log)[1]) == 2, text[-3000:]  # started again
    assert "slot 1 died (exit -9); restarting it" in text
    dead = next(t for t in trials if t["number"] == lost["number"])
    assert (dead["state"], dead["reason"]) == ("FAIL", "lease_lost")
    retry = next(t for t in trials if t["retry_of"] == dead["number"])
    assert retry["state"] == "COMPLETE" and retry["attempt"] == 2
    assert sorted(t["state"] for t in trials) == ["COMPLETE"] * 6 + ["FAIL"]


def test_sigterm_stops_every_slot_and_their_trials_are_retried(
    live_server: LiveServer, make_token: Any, team: str, tmp_path: Path
) -> None:
    token = make_token(team)
    log = tmp_path / "worker.log"
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=slot_study("term", epochs=5000, n_trials=3, max_retries=1)).status_code == 201
        worker = start_slots(live_server.url, token, log, "--slots", "3", "--worker-id", "t")
        try:
            wait_for(
                lambda: len(running(c, "term", min_epochs=1)) == 3, 300, f"3 slots never trained:\n{log.read_text()[-3000:]}"
            )
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]
        finally:
            stop(worker)
        trials = trials_of(c, "term")
        c.post("/api/v1/studies/term/stop")
    assert not any(alive(pid) for pids in slot_pids(log).values() for pid in pids)
    originals = [t for t in trials if t["attempt"] == 1]
    assert sorted(t["worker_id"] for t in originals) == ["t/slot0", "t/slot1", "t/slot2"]
    assert [(t["state"], t["reason"]) for t in originals] == [("FAIL", "interrupted")] * 3
    retries = [t for t in trials if t["attempt"] == 2]
    assert sorted(t["retry_of"] for t in retries) == sorted(t["number"] for t in originals)
    assert {t["state"] for t in retries} == {"WAITING"}


def test_a_refused_token_stops_every_slot_with_exit_code_3(live_server: LiveServer, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = start_slots(live_server.url, "hpo_00000000_refused", log, "--slots", "2")
    try:
        assert worker.wait(timeout=120) == 3, log.read_text()[-3000:]
    finally:
        stop(worker)
    assert "refuses" in log.read_text()
    assert not any(alive(pid) for pids in slot_pids(log).values() for pid in pids)
