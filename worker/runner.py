"""The claim loop: claim -> train -> report every epoch -> finish, with a heartbeat thread.
(In a trial slot, worker/slots.py, the supervisor process keeps the lease alive instead.)

Built-in models train in this process (workloads/builtin.py); plugin and command workloads run
in a child process (workloads/external.py). Either way the trial is finished with a state, a
`reason` when it did not simply complete or get pruned (see worker/workloads/__init__.py), and
a few metrics.

SIGTERM (or Ctrl-C) stops after the current epoch (a user workload's process is terminated):
the trial is finished as failed (reason `interrupted`) so the service can hand it out again,
and the worker exits 0.

Outages. Reports go through the trial's Outbox (worker/outbox.py): one that cannot be delivered
is queued and training goes on; the queue is delivered in order once the service answers. A
failing heartbeat is only logged. Before the finish, the queue is drained, retrying for up to
`finish_leases` lease lengths (one when stopping on a signal); the finish is retried as long.
If that runs out the trial is left unfinished: its lease expires and the service retries it
(from its last checkpoint). A lost lease (409) or a deleted study (404/410), at any point,
abandons the trial (no finish), frees the device's memory, and the worker claims new work."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from service.spec import Assignment
from worker.client import LeaseLost, ServiceClient, ProtocolError
from worker.outbox import Outbox, refused
from worker.workloads import TrialOutcome
from worker.device import release_device_memory
from worker.workloads.builtin import run_builtin, run_lr_finder
from worker.workloads.external import run_user_workload
from worker.workloads.policy import Policy

log = logging.getLogger("hpo.worker")


class NotFinished(Exception):
    """The trial's reports or its finish could not be delivered in time; its lease will expire."""


class _Heartbeat(threading.Thread):
    """Extends the lease while the trainer works; notices when the lease is lost."""

    def __init__(self, client: ServiceClient, assignment: Assignment) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{assignment.trial_id}")
        self._client = client
        self._assignment = assignment
        self._done = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        failing = False
        beat = self._assignment.heartbeat_seconds
        while not self._done.wait(beat):
            try:
                # Retried for one heartbeat interval at most: the next beat takes over.
                self._client.heartbeat(self._assignment, retry_for=beat)
            except LeaseLost:
                self.lost.set()
                return
            except Exception as exc:  # an outage: the trial trains on, the next beat may get through
                if not failing:
                    log.warning("heartbeat for trial %s failed: %s", self._assignment.trial_id, exc)
                failing = True
            else:
                if failing:
                    log.info("heartbeat for trial %s goes through again", self._assignment.trial_id)
                failing = False

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


class LeaseKeeper(Protocol):
    """Keeps one trial's lease alive from start() to stop(); `lost.is_set()` says the service
    took the trial back. _Heartbeat is one; a trial slot's is worker/slots.py's _SlotLease."""

    lost: Any  # anything with is_set(): the workloads only ask

    def start(self) -> None: ...

    def stop(self) -> None: ...


class TokenRefused(Exception):
    """The service refuses this worker's token: stop instead of retrying forever."""


@dataclass
class Runner:
    client: ServiceClient
    worker_id: str
    device: str
    studies: list[str] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    max_idle_backoff: float = 10.0
    data_root: Path | None = None
    # Which plugin and command workloads this worker runs, their timeout and memory cap.
    policy: Policy = field(default_factory=Policy)
    # Append every acknowledged report here as a JSON line (worker/outbox.py); None: don't.
    ack_log: Path | None = None
    # How long, in lease lengths, the end of a trial waits for its queued reports and its finish
    # to get through an outage (one when stopping on a signal).
    finish_leases: float = 3.0
    # The first wait between those attempts (doubling up to 10 s).
    retry_delay: float = 0.5
    # Who keeps each trial's lease alive: a heartbeat thread of this process, or in a trial slot
    # the supervisor's shared heartbeat (worker/slots.py).
    lease_keeper: Callable[[ServiceClient, Assignment], LeaseKeeper] = _Heartbeat
    # Trials trained at once as one batched model (--fuse K, worker/fused/group_run.py); 1: one at a time.
    fuse: int = 1

    def install_signal_handlers(self) -> None:
        def _handle(signum: int, _frame: object) -> None:
            log.info("signal %s: stopping after the current epoch", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)

    def run(self, *, max_trials: int | None = None, exit_when_idle: float | None = None) -> int:
        """Claim and train until stopped; returns the number of trials run."""
        done = 0
        backoff = 0.5
        idle_since = time.monotonic()
        while not self.stop.is_set() and (max_trials is None or done < max_trials):
            try:
                claimed = self._claim(None if max_trials is None else max_trials - done)
            except ProtocolError as exc:
                if exc.status in (401, 403):
                    # A revoked, expired or wrong-role token will not start working by itself.
                    raise TokenRefused(exc.detail) from exc
                log.warning("claim failed: %s", exc)
                claimed = None
            except Exception as exc:  # the service is away: wait and ask again
                log.warning("claim failed: %s", exc)
                claimed = None
            if claimed is None:
                if exit_when_idle is not None and time.monotonic() - idle_since > exit_when_idle:
                    break
                # Wait with backoff and jitter, so an idle pool does not hammer the service.
                self.stop.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.max_idle_backoff)
                continue
            backoff = 0.5
            assignments, alone = claimed
            if self.fuse > 1 and alone is None:
                from worker.fused.group_run import GroupRun

                done += GroupRun(self, self.fuse).run(assignments)
            else:
                for assignment in assignments:
                    try:
                        self.run_trial(assignment)
                    except Exception as exc:  # e.g. the finish could not be delivered: the lease will expire
                        log.error("trial %s#%d could not be finished: %s", assignment.study, assignment.number, exc)
                    done += 1
            idle_since = time.monotonic()
        return done

    def _claim(self, left: int | None) -> tuple[list[Assignment], str | None] | None:
        """The next trial, or with --fuse K up to K of them (and why they train alone, if so)."""
        if self.fuse > 1:
            return self.client.claim_group(self.worker_id, self.studies, min(self.fuse, left or self.fuse))
        assignment = self.client.claim(self.worker_id, self.studies)
        return None if assignment is None else ([assignment], None)

    def run_trial(self, a: Assignment) -> TrialOutcome:
        started = time.monotonic()
        outbox = Outbox(self.client, a, worker_id=self.worker_id, ack_log=self.ack_log, first_delay=self.retry_delay)
        heartbeat = self.lease_keeper(self.client, a)
        heartbeat.start()
        try:
            outcome = self._execute(a, heartbeat, outbox)
            if outcome.state is not None:
                self._finish(a, outcome, outbox)
        except LeaseLost as exc:
            outcome = TrialOutcome(None, error=f"lease lost: {exc.detail}")
        finally:
            heartbeat.stop()
        if outcome.state is None:
            # Abandoned: whatever the trial left on the device goes before the next claim.
            release_device_memory(self.device)
        self.log_outcome(a, outcome, started)
        return outcome

    def log_outcome(self, a: Assignment, outcome: TrialOutcome, started: float, *, fused: bool = False) -> None:
        """The worker's one line per trial."""
        log.info(
            "trial %s#%d params=%s outcome=%s%s value=%s epochs=%d time=%.1fs%s%s",
            a.study,
            a.number,
            a.params,
            outcome.state or "abandoned",
            f" ({outcome.reason})" if outcome.reason else "",
            "-" if outcome.value is None else f"{outcome.value:.5g}",
            outcome.epochs,
            time.monotonic() - started,
            " fused" if fused else "",
            f" error={outcome.error}" if outcome.error else "",
        )

    def _finish(self, a: Assignment, outcome: TrialOutcome, outbox: Outbox) -> None:
        """Deliver the queued reports, then the finish, through an outage of up to
        `finish_leases` lease lengths. Raises LeaseLost, or NotFinished when time runs out."""
        assert outcome.state is not None
        patience = a.lease_seconds * (1.0 if self.stop.is_set() else self.finish_leases)
        deadline = time.monotonic() + patience
        if not outbox.drain(deadline):
            raise NotFinished(f"{outbox.pending} reports could not be delivered in {patience:g}s")
        # The prune answer to a report delivered this late is moot: the trial ran to its end.
        delay = self.retry_delay
        while True:
            try:
                self._send_finish(a, outcome, max(deadline - time.monotonic(), 0.0))
                return
            except LeaseLost:
                raise
            except Exception as exc:
                if refused(exc) or time.monotonic() >= deadline:
                    raise
                log.debug("finish of trial %s not delivered yet: %s", a.trial_id, exc)
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 10.0)

    def _send_finish(self, a: Assignment, outcome: TrialOutcome, retry_for: float) -> None:
        assert outcome.state is not None
        try:
            self.client.finish(
                a, outcome.state, outcome.value, outcome.error, outcome.reason, outcome.metrics or None, retry_for=retry_for
            )
        except ProtocolError as exc:
            if exc.status != 422 or (outcome.reason is None and not outcome.metrics):
                raise
            # The extras were refused (a service that validates them differently): the trial's
            # end matters more than its reason and metrics.
            log.warning("finish of trial %s refused its reason/metrics (%s); sending it without", a.trial_id, exc.detail)
            self.client.finish(a, outcome.state, outcome.value, outcome.error, retry_for=retry_for)

    def _execute(self, a: Assignment, heartbeat: LeaseKeeper, outbox: Outbox) -> TrialOutcome:
        if a.task == "lr_finder" or a.workload.is_builtin:
            run = run_lr_finder if a.task == "lr_finder" else run_builtin
            return run(
                a,
                client=self.client,
                lease_lost=heartbeat.lost,
                stop=self.stop,
                device=self.device,
                data_root=self.data_root,
                outbox=outbox,
            )
        return run_user_workload(
            a,
            client=self.client,
            lease_lost=heartbeat.lost,
            stop=self.stop,
            device=self.device,
            data_root=self.data_root,
            policy=self.policy,
            outbox=outbox,
        )
