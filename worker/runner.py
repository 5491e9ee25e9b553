"""The claim loop: claim -> train -> report every epoch -> finish, with a heartbeat thread.

SIGTERM (or Ctrl-C) stops after the current epoch: the trial is finished as failed so the
service can hand it out again, and the worker exits 0."""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

from service.spec import Assignment, FinishState
from worker.client import LeaseLost, ServiceClient

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
class TrialOutcome:
    state: FinishState | None  # None: the lease was lost and the trial is no longer ours
    value: float | None = None
    error: str | None = None
    epochs: int = 0


@dataclass
class Runner:
    client: ServiceClient
    worker_id: str
    device: str
    studies: list[str] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    max_idle_backoff: float = 10.0

    def install_signal_handlers(self) -> None:
        def _handle(signum: int, _frame: object) -> None:
            log.info("signal %s: finishing after the current epoch", signal.Signals(signum).name)
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
            outcome = self._train(a, heartbeat)
            if outcome.state is not None:
                self.client.finish(a, outcome.state, outcome.value, outcome.error)
        except LeaseLost as exc:
            outcome = TrialOutcome(None, error=f"lease lost: {exc.detail}")
        finally:
            heartbeat.stop()
        log.info(
            "trial %s#%d params=%s outcome=%s value=%s epochs=%d time=%.1fs%s",
            a.study,
            a.number,
            a.params,
            outcome.state or "abandoned",
            "-" if outcome.value is None else f"{outcome.value:.5g}",
            outcome.epochs,
            time.monotonic() - started,
            f" error={outcome.error}" if outcome.error else "",
        )
        return outcome

    def _train(self, a: Assignment, heartbeat: _Heartbeat) -> TrialOutcome:
        from worker.trainer import train  # torch is imported only once there is work

        better = min if a.direction == "minimize" else max
        best: float | None = None
        epochs = 0
        try:
            for result in train(a.workload, a.hyperparameters(), self.device):
                epochs = result.epoch
                loss = result.val_loss
                if not math.isfinite(loss):
                    # A NaN or inf validation loss means divergence (LR too high, see
                    # HYPERPARAMETERS.md); it is not a value Optuna can rank.
                    return TrialOutcome("failed", best, f"diverged: validation loss is {loss} at epoch {epochs}", epochs)
                best = loss if best is None else better(best, loss)
                prune = self.client.report(a, result.epoch, loss)
                if heartbeat.lost.is_set():
                    return TrialOutcome(None, best, "lease lost", epochs)
                if prune:
                    return TrialOutcome("pruned", best, None, epochs)
                if self.stop.is_set():
                    return TrialOutcome("failed", best, f"worker stopped by signal after epoch {epochs}", epochs)
        except LeaseLost:
            raise
        except Exception as exc:  # one broken trial must not take the worker down
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log.debug("trial %s#%d raised", a.study, a.number, exc_info=True)
            return TrialOutcome("failed", best, detail, epochs)
        if best is None:
            return TrialOutcome("failed", None, "the trainer produced no epochs", epochs)
        # The objective is the best validation loss over the epochs (README, "Objective").
        return TrialOutcome("complete", best, None, epochs)
