"""Trial slots: `hpo worker --slots N` trains N trials at once on one device, so one worker with
small models can fill a big GPU.

The worker process becomes a supervisor. It starts N slot processes (multiprocessing's "spawn"
context: CUDA cannot be forked), and each runs the ordinary claim loop (worker/runner.py) with
the worker id `<worker_id>/slot<i>`, a client of its own and the lease of whatever trial it
claimed. All slots use the same device.

The slots share the supervisor's heartbeat. A slot tells the supervisor, over a pipe of its own,
which trial it holds ("hold") and when it lets go ("drop"); the supervisor heartbeats every held
lease (the runner's _Heartbeat, one thread per held lease, so a slow call for one lease never
delays another's). When the service answers that a lease is lost, the supervisor writes that
trial's id into the slot's shared `lost_trial` value and the slot abandons the trial exactly as
a single worker does when its own heartbeat thread sees the lease lost. The verdict names the
trial, so a late one cannot hit the slot's next trial. Pipes and a lock-free shared integer only:
a SIGKILLed slot cannot leave behind a lock that the others wait for.

SIGTERM/SIGINT to the supervisor are forwarded (as SIGTERM) to every slot once its signal
handlers are in place; each ends its current trial as `interrupted`, as a single worker does,
and the supervisor exits when they all have: 0 if every slot exited 0, 3 if the service refused
the token, 1 otherwise. A slot that dies otherwise (SIGKILL, a crash) is started again, at most
MAX_RESTARTS times in RESTART_WINDOW seconds; the trial it held is not lost: its lease expires
and the service retries it. Slots die with the supervisor (PR_SET_PDEATHSIG), since nobody
would heartbeat their leases.

`--max-trials` and `--exit-when-idle` apply to each slot (a slot exits after its own N trials,
or after that long without work); the supervisor exits once every slot has."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from service.spec import Assignment
from worker.client import ServiceClient
from worker.runner import Runner, TokenRefused, _Heartbeat
from worker.workloads.policy import Policy

log = logging.getLogger("hpo.worker")

MAX_RESTARTS = 3
RESTART_WINDOW = 60.0
# How often the supervisor looks at its slots when none of them says anything.
TICK = 0.5
NO_TRIAL = -1


def default_threads(slots: int) -> int:
    """torch CPU threads per slot when not given: the machine's CPUs shared out, so N slots do
    not each start one thread per CPU and fight over them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // slots)


@dataclass(frozen=True)
class SlotConfig:
    """What a slot process needs to build its Runner (pickled into the spawned process)."""

    server_url: str
    token: str
    worker_id: str
    device: str | None  # None: each slot picks cuda when available, else cpu (the same answer)
    threads: int
    studies: list[str] | None = None
    data_root: Path | None = None
    policy: Policy = field(default_factory=Policy)
    ack_log: Path | None = None
    request_timeout: float = 30.0
    verbose: bool = False
    max_trials: int | None = None
    exit_when_idle: float | None = None
    fuse: int = 1  # trials each slot trains at once as one batched model (--fuse K)


# ---------------------------------------------------------------- the slot process


class _Lost:
    """The supervisor's verdict on one trial's lease, read from the slot's shared value."""

    def __init__(self, lost_trial: Any, trial_id: int) -> None:
        self._lost_trial = lost_trial
        self._trial_id = trial_id

    def is_set(self) -> bool:
        return self._lost_trial.value == self._trial_id


class _SlotLease:
    """A slot's stand-in for the runner's heartbeat thread (worker/runner.py LeaseKeeper): the
    supervisor keeps the lease alive while the slot holds it."""

    def __init__(self, conn: Connection, lost_trial: Any, a: Assignment) -> None:
        self._conn = conn
        self._a = a
        self.lost = _Lost(lost_trial, a.trial_id)

    def start(self) -> None:
        self._send(("hold", self._a))

    def stop(self) -> None:
        self._send(("drop", self._a.trial_id))

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._conn.send(message)
        except OSError as exc:  # the supervisor is gone; PR_SET_PDEATHSIG stops this slot
            log.warning("cannot reach the supervisor: %s", exc)


def _die_with(supervisor: int) -> None:
    """Have the kernel send this slot SIGTERM when its supervisor dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the prctl
        sys.exit(1)


def slot_runner(config: SlotConfig, index: int, conn: Connection, lost_trial: Any) -> Runner:
    """The Runner of slot `index`: no heartbeat thread of its own (the supervisor's keeps its
    leases alive, told over `conn`), and `lost_trial` says which trial's lease was lost."""
    return Runner(
        client=ServiceClient(config.server_url, config.token, timeout=config.request_timeout),
        worker_id=f"{config.worker_id}/slot{index}",
        device=config.device or "cpu",  # settled by slot_main once torch is imported
        studies=config.studies,
        data_root=config.data_root,
        policy=config.policy,
        ack_log=config.ack_log,
        lease_keeper=lambda _client, a: _SlotLease(conn, lost_trial, a),
        fuse=config.fuse,
    )


def slot_main(config: SlotConfig, index: int, conn: Connection, lost_trial: Any, supervisor: int) -> None:
    """A slot process: the claim loop of one slot. Exits 0, or 3 when the token is refused."""
    _die_with(supervisor)
    logging.basicConfig(
        level=logging.DEBUG if config.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s [slot{index}]: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.DEBUG if config.verbose else logging.WARNING)
    runner = slot_runner(config, index, conn, lost_trial)
    # Handlers first, then "ready": the supervisor forwards a stop only to a slot that can take it.
    runner.install_signal_handlers()
    conn.send(("ready",))

    import torch

    from worker.device import pick_device

    torch.set_num_threads(config.threads)
    runner.device = pick_device(config.device)
    log.info("slot %s on %s, %d threads", runner.worker_id, runner.device, config.threads)
    try:
        runner.run(max_trials=config.max_trials, exit_when_idle=config.exit_when_idle)
    except TokenRefused as exc:
        log.error("the service refuses this token: %s", exc)
        sys.exit(3)
    finally:
        runner.client.close()


# ---------------------------------------------------------------- the supervisor


@dataclass
class _Slot:
    index: int
    lost_trial: Any  # shared int64: the trial whose lease the supervisor found lost
    process: Any = None  # multiprocessing's SpawnProcess
    conn: Connection | None = None
    ready: bool = False  # its signal handlers are in place
    signalled: bool = False
    lease: tuple[int, _Heartbeat] | None = None  # the trial it holds and that trial's heartbeat
    restarts: deque[float] = field(default_factory=deque)
    exit: int | None = None  # its final exit code, once it is not started again


class Supervisor:
    def __init__(self, config: SlotConfig, slots: int) -> None:
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        # lock=False: a slot killed while reading must not leave a lock held.
        self.slots = [_Slot(i, self.ctx.Value("q", NO_TRIAL, lock=False)) for i in range(slots)]
        self.client = ServiceClient(config.server_url, config.token, timeout=config.request_timeout)
        self.stopping = False

    def install_signal_handlers(self) -> None:
        def _handle(signum: int, _frame: object) -> None:
            log.info("signal %s: stopping every slot after its current epoch", signal.Signals(signum).name)
            self.stopping = True

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)

    def run(self) -> int:
        """Run the slots until they have all exited; the worker's exit code."""
        try:
            for slot in self.slots:
                self._start(slot)
            while any(s.exit is None for s in self.slots):
                self._tick()
        finally:
            for slot in self.slots:
                self._release(slot)
                if slot.process is not None and slot.process.exitcode is None:
                    slot.process.terminate()  # the supervisor failed: its slots end their trials
            self.client.close()
        codes = [s.exit for s in self.slots]
        if 3 in codes:
            return 3
        return 0 if all(code == 0 for code in codes) else 1

    def _start(self, slot: _Slot) -> None:
        receiver, sender = self.ctx.Pipe(duplex=False)
        slot.lost_trial.value = NO_TRIAL
        slot.process = self.ctx.Process(
            target=slot_main,
            args=(self.config, slot.index, sender, slot.lost_trial, os.getpid()),
            name=f"slot{slot.index}",
        )
        slot.process.start()
        sender.close()  # the slot holds the only writing end: its death reads as EOF here
        slot.conn, slot.ready, slot.signalled = receiver, False, False
        log.info("slot %d started: pid %d", slot.index, slot.process.pid)

    def _tick(self) -> None:
        by_conn = {s.conn: s for s in self.slots if s.conn is not None}
        for conn in wait(list(by_conn), timeout=TICK):
            self._receive(by_conn[conn])  # type: ignore[index]
        for slot in self.slots:
            if slot.lease is not None and slot.lease[1].lost.is_set():
                trial_id = slot.lease[0]
                log.warning("slot %d: the lease of trial %d is lost; the slot abandons it", slot.index, trial_id)
                self._release(slot)
                slot.lost_trial.value = trial_id
            alive = slot.process is not None and slot.exit is None and slot.process.exitcode is None
            if alive and self.stopping and slot.ready and not slot.signalled:
                os.kill(slot.process.pid, signal.SIGTERM)
                slot.signalled = True
            if slot.exit is None and slot.process is not None and slot.process.exitcode is not None:
                self._receive(slot)  # what it said before it ended
                self._ended(slot)

    def _receive(self, slot: _Slot) -> None:
        conn = slot.conn
        try:
            while conn is not None and conn.poll():
                message = conn.recv()
                if message[0] == "ready":
                    slot.ready = True
                elif message[0] == "hold":
                    a: Assignment = message[1]
                    self._release(slot)
                    heartbeat = _Heartbeat(self.client, a)
                    heartbeat.start()
                    slot.lease = (a.trial_id, heartbeat)
                elif message[0] == "drop" and slot.lease is not None and slot.lease[0] == message[1]:
                    self._release(slot)
        except (EOFError, OSError):  # the slot has exited (or died)
            if conn is not None:
                conn.close()
            slot.conn = None

    def _release(self, slot: _Slot) -> None:
        if slot.lease is not None:
            slot.lease[1].stop()
            slot.lease = None

    def _ended(self, slot: _Slot) -> None:
        code = slot.process.exitcode
        slot.process.join()
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        if slot.lease is not None:
            # Its trial is left to its lease: the service fails it when the lease expires and
            # retries it (from its last checkpoint).
            log.warning("slot %d ended holding trial %d; the service will retry it", slot.index, slot.lease[0])
            self._release(slot)
        if code == 3:
            log.error("slot %d: the service refuses the token; stopping", slot.index)
            self.stopping = True  # the others' claims will be refused as well
            slot.exit = 3
        elif code == 0 or self.stopping:
            # A slot stopped before its handlers were in place (Ctrl-C reaches the whole process
            # group) held nothing: that is a clean stop too.
            slot.exit = 0 if self.stopping and not slot.ready else code
        else:
            now = time.monotonic()
            while slot.restarts and now - slot.restarts[0] > RESTART_WINDOW:
                slot.restarts.popleft()
            if len(slot.restarts) >= MAX_RESTARTS:
                log.error(
                    "slot %d died (exit %s) %d times within %gs: not restarted",
                    slot.index,
                    code,
                    MAX_RESTARTS + 1,
                    RESTART_WINDOW,
                )
                slot.exit = code
                return
            slot.restarts.append(now)
            log.warning("slot %d died (exit %s); restarting it", slot.index, code)
            self._start(slot)


def run_slots(config: SlotConfig, slots: int) -> int:
    supervisor = Supervisor(config, slots)
    supervisor.install_signal_handlers()
    log.info(
        "worker %s: %d trial slots on %s, %d torch threads each",
        config.worker_id,
        slots,
        config.device or "cuda if available, else cpu",
        config.threads,
    )
    return supervisor.run()
