"""`hpo worker --fuse K`: a group of up to K trials trained as one batched model (worker/fused/).

Each member is still its own trial, handled as worker/workloads/builtin.py handles one: its own
lease kept alive, its reports (each epoch's validation loss, with a checkpoint) through its own
Outbox, its own pruning answer, its own finish. What the members share is the training: one
`FusedTraining.run_epoch()` trains each of them one epoch. After it, every member's result is
reported; a pruned, diverged or finished member leaves the group and a member whose lease was
lost is dropped without a finish; then the group is refilled (a claim `like` a running member,
so the new trials fuse with it) up to K, and the next epoch starts. A retried member resumes
from its checkpoint, which has the unfused trainer's format.

A failure of the training itself (out of memory, a bug) fails every member with its reason; a
stop request (SIGTERM) ends every member after the current epoch as `interrupted`, as one trial
is. A claimed trial the trainer will not fuse with the group (a service whose fusion rule
differs from this worker's) keeps its lease and trains alone once the group is done."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from service.spec import Assignment
from worker.client import LeaseLost
from worker.device import release_device_memory
from worker.outbox import Outbox
from worker.fused.trainer import FusedTraining
from worker.training_run import EpochResult
from worker.workloads import TrialOutcome, describe, failure_reason
from worker.workloads.builtin import _Progress, epoch_outcome, start_resumed

if TYPE_CHECKING:
    from worker.runner import LeaseKeeper, Runner

log = logging.getLogger("hpo.worker")


@dataclass(eq=False)
class _Seat:
    """One member's trial, as the worker holds it while it trains in the group."""

    a: Assignment
    outbox: Outbox
    lease: LeaseKeeper
    progress: _Progress
    started: float = field(default_factory=time.monotonic)


class GroupRun:
    def __init__(self, runner: Runner, size: int) -> None:
        self.runner = runner
        self.size = size
        self.training: FusedTraining | None = None
        self.seats: dict[int, _Seat] = {}
        self.leftovers: list[_Seat] = []
        self.handled = 0

    def run(self, claimed: list[Assignment]) -> int:
        """Train the group until every member has ended; the number of trials it handled."""
        runner = self.runner
        try:
            # Every claimed trial is held (its lease kept) before anything can fail, so that a
            # failure below ends each of them, not only those that had joined.
            seats = [self._seat(a) for a in claimed]
            self.training = FusedTraining(claimed[0].workload, runner.device, data_root=runner.data_root)
            for seat in seats:
                self._join(seat)
            while self.seats:
                results = self.training.run_epoch()
                for trial_id, result in results.items():
                    self._after_epoch(self.seats[trial_id], result)
                if runner.stop.is_set():
                    for seat in list(self.seats.values()):
                        self._end(seat, seat.progress.interrupted())
                    break
                self._refill()
        except Exception as exc:  # the training failed: every member fails with it
            reason, detail = failure_reason(exc), describe(exc)
            log.debug("fused group raised", exc_info=True)
            traceback.clear_frames(exc.__traceback__)  # its frames hold the stacked tensors
            for seat in list(self.seats.values()):
                self._end(seat, seat.progress.outcome("failed", detail, reason))
        finally:
            for seat in list(self.seats.values()):  # only after a LeaseLost from a join
                self._leave(seat, TrialOutcome(None, error="lease lost"))
            self.training = None
            release_device_memory(runner.device)
        for seat in self.leftovers:
            seat.lease.stop()
            self.handled += 1
            runner.run_trial(seat.a)
        return self.handled

    def _seat(self, a: Assignment) -> _Seat:
        """Hold a claimed trial: its lease kept alive from now on."""
        runner = self.runner
        seat = _Seat(
            a,
            Outbox(runner.client, a, worker_id=runner.worker_id, ack_log=runner.ack_log, first_delay=runner.retry_delay),
            runner.lease_keeper(runner.client, a),
            _Progress(a.direction),
        )
        seat.lease.start()
        self.seats[a.trial_id] = seat
        return seat

    def _join(self, seat: _Seat) -> None:
        """The held trial joins the training, from its checkpoint if it is a retry that has one."""
        runner, training, a = self.runner, self.training, seat.a
        assert training is not None

        def add(resume: bytes | None) -> None:
            training.add(a.trial_id, a.hyperparameters(), resume=resume)

        try:
            start_resumed(a, runner.client, add, where=" in a fused group")
        except LeaseLost:
            self._leave(seat, TrialOutcome(None, error="lease lost"))
            return
        except ValueError as exc:  # not fusable with this group after all
            log.warning("trial %s#%d trains alone after its group: %s", a.study, a.number, exc)
            self.seats.pop(a.trial_id)
            self.leftovers.append(seat)
            return
        seat.progress.started(training, runner.device)
        for earlier in training.members[a.trial_id].run.history:
            seat.progress.add(earlier, timed=False)  # the epochs before the checkpoint count

    def _after_epoch(self, seat: _Seat, result: EpochResult) -> None:
        """One member's epoch, as run_builtin takes one (epoch_outcome); a member that has run
        its last epoch has left the training and completes."""
        training, a = self.training, seat.a
        assert training is not None
        checkpoint = partial(training.checkpoint, a.trial_id) if a.workload.checkpoint else None
        try:
            ended = epoch_outcome(result, seat.progress, seat.outbox, checkpoint, seat.lease.lost)
        except LeaseLost:
            self._leave(seat, TrialOutcome(None, error="lease lost"))
            return
        if ended is None and a.trial_id not in training.members:
            ended = seat.progress.outcome("complete")
        if ended is None:
            return
        if ended.state is None:
            self._leave(seat, ended)
        else:
            self._end(seat, ended)

    def _end(self, seat: _Seat, outcome: TrialOutcome) -> None:
        try:
            self.runner._finish(seat.a, outcome, seat.outbox)
        except LeaseLost as exc:
            outcome = TrialOutcome(None, error=f"lease lost: {exc.detail}")
        except Exception as exc:  # the finish could not be delivered: the lease will expire
            log.error("trial %s#%d could not be finished: %s", seat.a.study, seat.a.number, exc)
        self._leave(seat, outcome)

    def _leave(self, seat: _Seat, outcome: TrialOutcome) -> None:
        seat.lease.stop()
        self.seats.pop(seat.a.trial_id, None)
        if self.training is not None:
            self.training.drop(seat.a.trial_id)
        self.handled += 1
        self.runner.log_outcome(seat.a, outcome, seat.started, fused=True)

    def _refill(self) -> None:
        """New trials in the places members left, if the service has some that fuse."""
        room = self.size - len(self.seats) - len(self.leftovers)
        if room <= 0 or not self.seats or self.runner.stop.is_set():
            return
        like = next(iter(self.seats.values())).a
        try:
            claimed = self.runner.client.claim_group(self.runner.worker_id, self.runner.studies, room, like=like)
        except Exception as exc:  # the service is away, or `like` just lost its lease: go on without
            log.debug("refill failed: %s", exc)
            return
        for a in claimed[0] if claimed is not None else ():
            self._join(self._seat(a))
