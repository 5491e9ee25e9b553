"""The claim loop: claim -> train -> report every epoch -> finish, with a heartbeat thread.

Built-in models train in this process (workloads/builtin.py); plugin and command workloads run
in a child process (workloads/external.py). Either way the trial is finished with a state, a
`reason` when it did not simply complete or get pruned (see worker/workloads/__init__.py), and
a few metrics.

SIGTERM (or Ctrl-C) stops after the current epoch (a user workload's process is terminated):
the trial is finished as failed (reason `interrupted`) so the service can hand it out again,
and the worker exits 0."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.spec import Assignment
from worker.client import LeaseLost, ServiceClient, ServiceError
from worker.workloads import TrialOutcome
from worker.workloads.builtin import run_builtin
from worker.workloads.external import Policy, run_user_workload

log = logging.getLogger("hpo.worker")


class _Heartbeat(threading.Thread):
    """Extends the lease while the trainer works; notices when the lease is lost."""

    def __init__(self, client: ServiceClient, assignment: Assignment) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{assignment.trial_id}")
        self._client = client
        self._assignment = assignment
        self._done = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self._assignment.heartbeat_seconds):
            try:
                self._client.heartbeat(self._assignment)
            except LeaseLost:
                self.lost.set()
                return
            except Exception as exc:  # a transient outage: the next beat may get through
                log.warning("heartbeat for trial %s failed: %s", self._assignment.trial_id, exc)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


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
                assignment = self.client.claim(self.worker_id, self.studies)
            except Exception as exc:  # the service is away or refuses: wait and ask again
                log.warning("claim failed: %s", exc)
                assignment = None
            if assignment is None:
                if exit_when_idle is not None and time.monotonic() - idle_since > exit_when_idle:
                    break
                # Wait with backoff and jitter, so an idle pool does not hammer the service.
                self.stop.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.max_idle_backoff)
                continue
            backoff = 0.5
            try:
                self.run_trial(assignment)
            except Exception as exc:  # e.g. the finish could not be delivered: the lease will expire
                log.error("trial %s#%d could not be finished: %s", assignment.study, assignment.number, exc)
            done += 1
            idle_since = time.monotonic()
        return done

    def run_trial(self, a: Assignment) -> TrialOutcome:
        started = time.monotonic()
        heartbeat = _Heartbeat(self.client, a)
        heartbeat.start()
        try:
            outcome = self._execute(a, heartbeat)
            if outcome.state is not None:
                self._finish(a, outcome)
        except LeaseLost as exc:
            outcome = TrialOutcome(None, error=f"lease lost: {exc.detail}")
        finally:
            heartbeat.stop()
        log.info(
            "trial %s#%d params=%s outcome=%s%s value=%s epochs=%d time=%.1fs%s",
            a.study,
            a.number,
            a.params,
            outcome.state or "abandoned",
            f" ({outcome.reason})" if outcome.reason else "",
            "-" if outcome.value is None else f"{outcome.value:.5g}",
            outcome.epochs,
            time.monotonic() - started,
            f" error={outcome.error}" if outcome.error else "",
        )
        return outcome

    def _finish(self, a: Assignment, outcome: TrialOutcome) -> None:
        assert outcome.state is not None
        try:
            self.client.finish(a, outcome.state, outcome.value, outcome.error, outcome.reason, outcome.metrics or None)
        except ServiceError as exc:
            if exc.status != 422 or (outcome.reason is None and not outcome.metrics):
                raise
            # The extras were refused (a service that validates them differently): the trial's
            # end matters more than its reason and metrics.
            log.warning("finish of trial %s refused its reason/metrics (%s); sending it without", a.trial_id, exc.detail)
            self.client.finish(a, outcome.state, outcome.value, outcome.error)

    def _execute(self, a: Assignment, heartbeat: _Heartbeat) -> TrialOutcome:
        if a.workload.is_builtin:
            return run_builtin(
                a, client=self.client, lease_lost=heartbeat.lost, stop=self.stop, device=self.device, data_root=self.data_root
            )
        return run_user_workload(
            a,
            client=self.client,
            lease_lost=heartbeat.lost,
            stop=self.stop,
            device=self.device,
            data_root=self.data_root,
            policy=self.policy,
        )
