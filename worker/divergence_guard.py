"""The trainer's divergence guard: it stops a trial whose training loss is NaN, inf, or far
above the first batch's (worker/trainer.py yields the reason as the last epoch's `diverged`)."""

from __future__ import annotations

import math

import torch

# The divergence guard reads the batch losses back from the device every CHECK_EVERY batches
# (and at the end of each epoch). Each read is a host synchronisation that drains the device's
# queue of work, so it is not done every batch; the price is that a run that blows up does up
# to CHECK_EVERY - 1 more (useless) optimizer steps before it stops. The reported step is still
# the exact batch that tripped the guard, since every batch loss is read back.
CHECK_EVERY = 16


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
        # (step, batch length, loss on device; None where the caller reads the losses back itself)
        self._pending: list[tuple[int, int, torch.Tensor | None]] = []
        self.loss_sum = 0.0
        self.samples = 0

    def new_epoch(self) -> None:
        self.loss_sum, self.samples = 0.0, 0

    def add(self, step: int, n: int, loss: torch.Tensor) -> None:
        self._pending.append((step, n, loss.detach()))

    def add_read_elsewhere(self, step: int, n: int) -> None:
        """A batch whose loss the caller reads back with others' and hands to `check` as values (the
        fused trainer: one read for all its members)."""
        self._pending.append((step, n, None))

    def due(self) -> bool:
        return len(self._pending) >= CHECK_EVERY

    def pending(self) -> list[torch.Tensor]:
        return [loss for _, _, loss in self._pending if loss is not None]

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
