"""One trial's training loop for the built-in models (mlp, cnn), as a generator of per-epoch results.

A generator so the caller owns control flow: it reports each epoch, and can stop at any
epoch boundary (pruned, lease lost, SIGTERM) by simply no longer iterating or calling close().

Out-of-memory errors (torch.cuda.OutOfMemoryError, MemoryError) are not caught here: they
propagate to the runner, which records the trial's reason as `oom`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.spec import Workload
from worker.data import Split, load_split
from worker.models import build_model, uses_batchnorm
from worker.optim import build_optimizer
from worker.schedules import build_schedule, lr_of

# Validation is scored in chunks so its memory use stays flat whatever the dataset's size.
EVAL_CHUNK = 4096
# The cnn's activations are much larger per sample than the mlp's: smaller validation chunks.
CNN_EVAL_CHUNK = 256

# The divergence guard reads the batch losses back from the device every CHECK_EVERY batches
# (and at the end of each epoch). Each read is a host synchronisation that drains the device's
# queue of work, so it is not done every batch; the price is that a run that blows up does up
# to CHECK_EVERY - 1 more (useless) optimizer steps before it stops. The reported step is still
# the exact batch that tripped the guard, since every batch loss is read back.
CHECK_EVERY = 16


@dataclass
class EpochResult:
    epoch: int  # 1-based, so it can be reported directly as the pruner's step
    val_loss: float
    train_loss: float
    val_accuracy: float | None  # None for regression (and for an epoch cut short by divergence)
    lr: float  # the learning rate used during this epoch
    # Set on the last result when the divergence guard fired; a human-readable reason. val_loss
    # is then the loss that tripped the guard, which may be finite (a loss far above the first).
    diverged: str | None = None
    # On the first epoch's result: the untrained model's validation loss. The service's curve
    # diagnosis judges "barely moved from the start" against it (HYPERPARAMETERS.md, loss curves).
    initial_val_loss: float | None = None


class _Diverged(Exception):
    def __init__(self, reason: str, loss: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.loss = loss


class _Guard:
    """The divergence guard: a batch loss that is NaN or inf, or above `factor` times the first
    batch's loss, stops the trial (HYPERPARAMETERS.md, "What a loss curve says": NaN, inf, or
    rising sharply is diverged). Also sums the batch losses for the epoch's training loss, on the
    host, from the values it reads back anyway."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.first: float | None = None
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (step, batch length, loss on device)
        self.loss_sum = 0.0
        self.samples = 0

    def new_epoch(self) -> None:
        self.loss_sum, self.samples = 0.0, 0

    def add(self, step: int, n: int, loss: torch.Tensor) -> None:
        self._pending.append((step, n, loss.detach()))

    def due(self) -> bool:
        return len(self._pending) >= CHECK_EVERY

    def pending(self) -> list[torch.Tensor]:
        return [loss for _, _, loss in self._pending]

    def check(self, epoch: int, values: list[float] | None = None) -> None:
        """Raise _Diverged at the first bad pending loss. `values`: the pending losses already read
        back by the caller (so it can share one synchronisation with other numbers)."""
        if not self._pending:
            return
        if values is None:
            values = torch.stack(self.pending()).tolist()  # one host synchronisation
        pending, self._pending = self._pending, []
        for (step, n, _), value in zip(pending, values):
            # Weighted by the batch's length so a short last batch counts per sample.
            self.loss_sum += value * n
            self.samples += n
            if not math.isfinite(value):
                raise _Diverged(f"training loss is {value} at epoch {epoch}, step {step}", value)
            if self.first is None:
                self.first = value
            # A first loss of 0 (already perfect) has no meaningful multiple: only NaN/inf count then.
            elif self.first > 0 and value > self.factor * self.first:
                raise _Diverged(
                    f"training loss {value:.3g} > {self.factor:g}x the first loss {self.first:.3g} "
                    f"at epoch {epoch}, step {step}",
                    value,
                )


def train(
    workload: Workload,
    hp: dict[str, Any],
    device: str | torch.device,
    *,
    data_root: Path | None = None,
) -> Iterator[EpochResult]:
    """Train the built-in `workload` with hyperparameters `hp` (the full dict of the model's
    params, defaults filled in), yielding one EpochResult per epoch.

    A run that diverges (see `_Guard`; also a validation loss that is not finite) yields one last
    result with `diverged` set, and stops: within the epoch for a training loss, after it for a
    validation loss. The learning-rate schedule advances after every epoch that is not the last.

    Seeds torch's global RNG (model initialisation and dropout draw from it), so the same workload
    seed and `hp` give the same results on CPU; don't interleave two of these generators in one
    process if that matters. On CUDA, cuDNN's autotuning (below) may pick different kernels from
    run to run, so results match only to rounding there.
    """
    if not workload.is_builtin:
        raise ValueError(f"train() runs the built-in models (mlp, cnn), not {workload.model!r}")
    device = torch.device(device)
    if device.type == "cuda":
        # Every batch of a trial has the same input shape (except a shorter last one), so cuDNN's
        # one-off benchmark of the convolution algorithms for each shape pays for itself.
        torch.backends.cudnn.benchmark = True
    # torch accepts seeds up to 64 bits; a workload seed is any int.
    seed = workload.seed % 2**63
    torch.manual_seed(seed)

    data = load_split(
        workload.dataset, val_fraction=workload.val_fraction, seed=workload.seed, device=device, data_root=data_root
    )
    model = build_model(workload.model, data.input_shape, data.n_outputs, hp, workload.block).to(device)
    batch_size = int(hp["batch_size"])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batchnorm = uses_batchnorm(model)
    if batchnorm and batch_size == 1:
        # torch refuses to train BatchNorm on one sample ("tiny batches break BatchNorm",
        # HYPERPARAMETERS.md, Batch size); say so plainly instead.
        raise ValueError("batchnorm needs batch_size >= 2: BatchNorm cannot normalise a batch of one sample")
    optimizer = build_optimizer(model.parameters(), hp)
    schedule = build_schedule(optimizer, hp, workload.epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_clip = float(hp.get("grad_clip") or 0.0)
    classify = data.task == "classification"
    loss_fn = F.cross_entropy if classify else F.mse_loss
    if workload.precision == "bf16":

        def autocast() -> contextlib.AbstractContextManager[Any]:
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    eval_chunk = CNN_EVAL_CHUNK if workload.model == "cnn" else EVAL_CHUNK
    eval_chunk = max(eval_chunk, batch_size)

    # A generator of its own on the device, so the shuffle order depends only on the seed,
    # not on whatever else used the global RNG in between.
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(seed)
    n_train = data.x_train.shape[0]
    starts = list(range(0, n_train, batch_size))
    if batchnorm and len(starts) > 1 and n_train - starts[-1] == 1:
        # A last batch of one sample would make BatchNorm fail; it is left out of the epoch
        # (the shuffle puts those samples in other batches in other epochs).
        starts.pop()
    guard = _Guard(workload.divergence_factor)
    # One validation pass before any step: a single extra sync per trial.
    initial_sum, _ = _evaluate(model, data, loss_fn, autocast, eval_chunk)
    initial_val_loss: float | None = initial_sum.item() / data.x_val.shape[0]

    for epoch in range(1, workload.epochs + 1):
        lr = lr_of(optimizer)
        model.train()
        guard.new_epoch()
        # One gather per epoch; each batch is then a view (a slice), which keeps batch_size=1
        # cheap: no per-batch index tensor, no DataLoader, no host round trip.
        order = torch.randperm(n_train, device=device, generator=shuffle)
        x_epoch, y_epoch = data.x_train[order], data.y_train[order]
        try:
            for step, start in enumerate(starts, 1):
                xb = x_epoch[start : start + batch_size]
                yb = y_epoch[start : start + batch_size]
                with autocast():
                    out = model(xb)
                # The loss in float32 whatever the forward pass ran in.
                loss = loss_fn(out.float(), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip > 0:
                    # Clip by global norm (HYPERPARAMETERS.md, Regularisation: "tames the steep
                    # cliffs that cause exploding gradients"); computed on the device, no sync.
                    nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                guard.add(step, xb.shape[0], loss)
                if guard.due() and step < len(starts):
                    guard.check(epoch)
            val_sum, correct = _evaluate(model, data, loss_fn, autocast, eval_chunk)
            # The epoch's last synchronisation: the remaining batch losses and the validation sums.
            values = torch.stack([val_sum, correct, *guard.pending()]).tolist()
            guard.check(epoch, values[2:])
        except _Diverged as d:
            # The reason and loss, not the exception: it would hold its traceback, and so the frames.
            diverged: tuple[str, float] | None = (d.reason, d.loss)
        else:
            diverged = None
        if diverged is not None:
            yield EpochResult(
                epoch=epoch,
                val_loss=diverged[1],
                train_loss=guard.loss_sum / max(guard.samples, 1),
                val_accuracy=None,
                lr=lr,
                diverged=diverged[0],
                initial_val_loss=initial_val_loss,
            )
            return
        n_val = data.x_val.shape[0]
        val_loss = values[0] / n_val
        result = EpochResult(
            epoch=epoch,
            val_loss=val_loss,
            train_loss=guard.loss_sum / guard.samples,
            val_accuracy=values[1] / n_val if classify else None,
            lr=lr,
            initial_val_loss=initial_val_loss,
        )
        initial_val_loss = None
        if not math.isfinite(val_loss):
            result.diverged = f"validation loss is {val_loss} at epoch {epoch}"
            yield result
            return
        if epoch < workload.epochs:
            # The next epoch's LR, set before the yield so the caller sees a finished epoch.
            schedule.epoch_end(val_loss)
        yield result


@torch.no_grad()
def _evaluate(
    model: nn.Module, data: Split, loss_fn: Any, autocast: Any, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-sample validation loss and number of correct predictions (0 for regression),
    both still on the device. Per sample, a regression's MSE is the mean over its outputs."""
    model.eval()  # dropout off, BatchNorm on its running statistics
    x, y = data.x_val, data.y_val
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    classify = data.task == "classification"
    for start in range(0, x.shape[0], chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        with autocast():
            out = model(xb)
        out = out.float()
        if classify:
            loss_sum += loss_fn(out, yb, reduction="sum")
            correct += (out.argmax(dim=1) == yb).sum()
        else:
            loss_sum += loss_fn(out, yb, reduction="sum") / out.shape[1]
    return loss_sum, correct
