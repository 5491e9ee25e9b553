"""Built-in workloads (mlp, cnn): trained in the worker's own process, one epoch at a time.

Each epoch's validation loss is reported (through the trial's Outbox, which queues reports while
the service is away); the pruner's answer, a diverged run, a lost lease or a stop request end the
trial at that epoch. Out of memory fails only the trial, and the device's memory is handed back
before the worker claims the next one.

With `workload.checkpoint` (the default) each epoch's report carries a checkpoint of the run
(worker/trainer.py), and a retried trial (`resume_step` set) fetches the checkpoint of its
lineage and continues after it: its first report is at resume_step + 1, and the epochs before
count towards its best value and metrics. A checkpoint that is missing, cannot be fetched or
cannot be resumed from means training from scratch."""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from service.spec import Assignment
from worker.device import release_device_memory
from worker.client import LeaseLost, ServiceClient
from worker.outbox import Outbox
from worker.workloads import TrialOutcome, describe, failure_reason, finite_metrics

log = logging.getLogger("hpo.worker")
T = TypeVar("T")


class _Progress:
    """What the epochs so far say: the best loss, and the metrics sent at finish."""

    def __init__(self, direction: str) -> None:
        self._better = min if direction == "minimize" else max
        self.best: float | None = None
        self.epochs = 0
        self.best_accuracy: float | None = None
        self.initial_loss: float | None = None
        self.last: Any = None
        # For objectives and constraints besides the loss (a study's `objectives`, `constraints`).
        self.params_m: float | None = None
        self.device: str = "cpu"
        self._timed: list[float] = []
        self._since = time.monotonic()

    def started(self, run: Any, device: str) -> None:
        count = getattr(run, "parameter_count", None)  # a test double of the trainer may have none
        if count is not None:
            self.params_m = count() / 1e6
        self.device = device
        if device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()  # this trial's peak, not an earlier one's
        self._since = time.monotonic()

    def add(self, result: Any, *, count_loss: bool = True, timed: bool = True) -> None:
        if timed:
            now = time.monotonic()
            self._timed.append(now - self._since)
            self._since = now
        self.epochs = result.epoch
        self.last = result
        if getattr(result, "initial_val_loss", None) is not None:
            self.initial_loss = result.initial_val_loss
        if count_loss:
            self.best = result.val_loss if self.best is None else self._better(self.best, result.val_loss)
        accuracy = getattr(result, "val_accuracy", None)
        if accuracy is not None and math.isfinite(accuracy):
            self.best_accuracy = accuracy if self.best_accuracy is None else max(self.best_accuracy, accuracy)

    def metrics(self) -> dict[str, float]:
        last = self.last
        return finite_metrics(
            {
                "val_accuracy": self.best_accuracy,
                "train_loss": getattr(last, "train_loss", None),
                "lr": getattr(last, "lr", None),
                "epochs": self.epochs,
                "initial_val_loss": self.initial_loss,
                "params_m": self.params_m,
                "epoch_seconds": sum(self._timed) / len(self._timed) if self._timed else None,
                "peak_memory_mb": _peak_memory_mb(self.device),
            }
        )

    def outcome(self, state: Any, error: str | None = None, reason: str | None = None) -> TrialOutcome:
        return TrialOutcome(state, self.best, error, self.epochs, reason, self.metrics())

    def interrupted(self) -> TrialOutcome:
        """Failed, so that the service hands the trial out again: the worker was told to stop."""
        return self.outcome("failed", f"worker stopped by signal after epoch {self.epochs}", "interrupted")


def epoch_outcome(
    result: Any, progress: _Progress, outbox: Outbox, checkpoint: Callable[[], bytes] | None, lease_lost: Any
) -> TrialOutcome | None:
    """One epoch's result of a built-in trial: counted, reported through `outbox` (with
    `checkpoint()`'s bytes when given and the outbox takes them), and the outcome that ends the
    trial at this epoch (diverged, pruned, its lease lost), or None to train on. Raises LeaseLost."""
    loss = result.val_loss
    diverged = getattr(result, "diverged", None)
    if diverged or not math.isfinite(loss):
        # A dead run gets no more device time (HYPERPARAMETERS.md: usually too high an LR).
        # Its loss is not reported: the guard may have cut the epoch short (the loss is
        # then a training loss), and NaN/inf is neither rankable nor valid JSON.
        progress.add(result, count_loss=False)
        why = diverged or f"validation loss is {loss} at epoch {result.epoch}"
        return progress.outcome("pruned", f"diverged: {why}", "diverged")
    progress.add(result)
    data = checkpoint() if checkpoint is not None and outbox.checkpoints else None
    prune = outbox.send(result.epoch, loss, data)
    if lease_lost.is_set():
        return progress.outcome(None, "lease lost")
    if prune:
        return progress.outcome("pruned")
    return None


def start_resumed(a: Assignment, client: ServiceClient, start: Callable[[bytes | None], T], where: str = "") -> T:
    """start(checkpoint bytes) for a retried trial whose lineage saved a checkpoint, else
    start(None); a checkpoint that cannot be resumed from (CheckpointError) means start(None),
    training from scratch. `where` ends the log line of a resume. Raises LeaseLost."""
    from worker.checkpoint import CheckpointError  # torch is imported only once there is work

    resume = _fetch_checkpoint(a, client)
    if resume is not None:
        try:
            started = start(resume[1])
        except CheckpointError as exc:
            log.warning("trial %s#%d: cannot resume from step %d (%s); training from scratch", a.study, a.number, resume[0], exc)
        else:
            log.info(
                "resumed trial #%d (attempt %d, retry of #%s) from step %d%s",
                a.number, a.attempt, a.retry_of if a.retry_of is not None else "-", resume[0], where,
            )
            return started
    return start(None)


def _peak_memory_mb(device: str) -> float | None:
    """The trial's peak memory: CUDA's allocator peak on a GPU, else the worker process's peak
    resident set (which includes what earlier trials of the process used)."""
    try:
        if device.startswith("cuda"):
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # no CUDA context, no resource module: the metric is just missing
        return None


def run_builtin(
    a: Assignment,
    *,
    client: ServiceClient,
    lease_lost: threading.Event,
    stop: threading.Event,
    device: str,
    data_root: Path | None = None,
    outbox: Outbox | None = None,
) -> TrialOutcome:
    """Train `a`, reporting every epoch through `outbox` (one of its own if not given: then
    whatever is still queued at the end is the caller's loss). Raises LeaseLost."""
    from worker.trainer import train  # torch is imported only once there is work

    outbox = outbox if outbox is not None else Outbox(client, a)
    progress = _Progress(a.direction)
    # data_root only when set, so a trainer (or a test double) without the keyword still works.
    extra: dict[str, Any] = {} if data_root is None else {"data_root": data_root}
    results = None
    oom = False

    def start(resume: bytes | None) -> Any:
        # `resume` only when there is one, like data_root.
        return train(a.workload, a.hyperparameters(), device, **extra, **({} if resume is None else {"resume": resume}))

    try:
        results = start_resumed(a, client, start)
        progress.started(results, device)
        for earlier in getattr(results, "history", ()):
            progress.add(earlier, timed=False)  # the epochs before the checkpoint count towards best and metrics
        # The trainer's checkpoint() is called only when the study wants checkpoints (and a test
        # double of the trainer may have none).
        checkpoint = getattr(results, "checkpoint", None) if a.workload.checkpoint else None
        for result in results:
            ended = epoch_outcome(result, progress, outbox, checkpoint, lease_lost)
            if ended is not None:
                return ended
            if stop.is_set():
                return progress.interrupted()
    except LeaseLost:
        raise
    except Exception as exc:  # one broken trial must not take the worker down
        reason = failure_reason(exc)
        detail = describe(exc)
        log.debug("trial %s#%d raised", a.study, a.number, exc_info=True)
        # The traceback's frames hold the model, the batch and the optimizer state: let them go.
        traceback.clear_frames(exc.__traceback__)
        oom = reason == "oom"
        return progress.outcome("failed", detail, reason)
    finally:
        if results is not None and hasattr(results, "close"):
            results.close()  # a run left mid-epoch lets go of its tensors now
        del results
        if oom:
            release_device_memory(device)
    if progress.best is None:
        return progress.outcome("failed", "the trainer produced no epochs", "exception")
    # The objective is the best validation loss over the epochs (README, "Objective").
    return progress.outcome("complete")


def run_lr_finder(
    a: Assignment,
    *,
    client: ServiceClient,
    lease_lost: threading.Event,
    stop: threading.Event,
    device: str,
    data_root: Path | None = None,
    outbox: Outbox | None = None,
) -> TrialOutcome:
    """The LR range test: each batch's smoothed loss reported as step = batch index (the
    service knows the lr of every step). The objective is the lowest smoothed loss."""
    from worker.lr_finder import lr_range_test  # torch is imported only once there is work

    assert a.finder is not None
    outbox = outbox if outbox is not None else Outbox(client, a)
    best: float | None = None
    best_lr: float | None = None
    steps = 0
    try:
        for step, lr, loss in lr_range_test(a.workload, a.hyperparameters(), a.finder, device, data_root=data_root):
            steps = step + 1
            if best is None or loss < best:
                best, best_lr = loss, lr
            outbox.send(step, loss)  # no pruner: the whole curve is the point
            if lease_lost.is_set():
                return TrialOutcome(None, best, "lease lost", steps, None, {})
            if stop.is_set():
                return TrialOutcome("failed", best, f"worker stopped by signal at step {step}", steps, "interrupted", {})
    except LeaseLost:
        raise
    except Exception as exc:  # one broken trial must not take the worker down
        reason = failure_reason(exc)
        detail = describe(exc)
        traceback.clear_frames(exc.__traceback__)
        if reason == "oom":
            release_device_memory(device)
        return TrialOutcome("failed", best, detail, steps, reason, {})
    if best is None:
        return TrialOutcome("failed", None, "the range test produced no finite loss", steps, "diverged", {})
    return TrialOutcome("complete", best, None, steps, None, finite_metrics({"steps": steps, "min_loss_lr": best_lr}))


def _fetch_checkpoint(a: Assignment, client: ServiceClient) -> tuple[int, bytes] | None:
    """The (step, bytes) a retried trial resumes from; None to train from scratch. Raises LeaseLost."""
    if a.resume_step is None:
        return None
    try:
        found = client.fetch_checkpoint(a)
    except LeaseLost:
        raise
    except Exception as exc:  # the service is away after the client's retries: start over, lose nothing
        log.warning("trial %s#%d: cannot fetch its checkpoint (%s); training from scratch", a.study, a.number, exc)
        return None
    if found is None:
        log.info(
            "trial %s#%d (attempt %d, retry of #%s): no checkpoint to resume from; training from scratch",
            a.study, a.number, a.attempt, a.retry_of,
        )
    return found


