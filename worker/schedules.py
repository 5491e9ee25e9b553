"""Learning-rate schedules, stepped once per epoch.

"A schedule usually beats a fixed LR, because SGD's gradient noise does not vanish even at a
minimum" (../shared/HYPERPARAMETERS.md, "LR schedules"). The names and defaults are those of
TRAINING_PARAMS in service/spec/hyperparameters.py.

With lr0 = hp["lr"], w = hp["warmup_epochs"], E = `epochs`, epoch e = 1..E, and
t = e - w - 1 the epoch index after warmup (0-based), group 0's LR during epoch e is:

    warmup (e <= w)  lr0 * e / (w + 1)                  then e = w + 1 (t = 0) is lr0
    constant         lr0
    time_based       lr0 / (1 + lr_decay * t)
    linear           lr0 * (1 - (1 - lr_floor) * min(t, D) / D),  D = decay_epochs, or
                     T if decay_epochs is 0, where T = max(E - w - 1, 1) is the last epoch's t
    exponential      lr0 * gamma**t                     gamma None: 0.95
    step             lr0 * gamma**(t // step_size)      gamma None: 0.1
    cosine           lr0 * (f + (1 - f) * (1 + cos(pi * t / T)) / 2),  f = lr_floor
    plateau          lr0, times plateau_factor each time the validation loss has not improved
                     (by more than 1e-4 relative: torch's threshold) for more than
                     plateau_patience epochs in a row; the losses of warmup epochs are ignored.

The trainer builds the schedule before epoch 1 and calls `epoch_end(val_loss)` after each epoch.
`state_dict()` / `load_state_dict()` carry a schedule across a checkpoint (worker/trainer.py): a
schedule built the same way and loaded with a saved state continues exactly where it left off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from service.spec.hyperparameters import SCHEDULES

# The gamma a schedule uses when hp["gamma"] is None (the spec's default for both).
DEFAULT_GAMMA = {"exponential": 0.95, "step": 0.1}


class LrSchedule:
    """An optimizer's LR over the epochs: built for epoch 1, advanced by `epoch_end`."""

    def __init__(
        self,
        *,
        scheduler: LRScheduler | None = None,
        warmup: LRScheduler | None = None,
        warmup_epochs: int = 0,
        plateau: ReduceLROnPlateau | None = None,
    ) -> None:
        # Either `scheduler` (warmup already chained in with SequentialLR), or `plateau` with
        # an optional `warmup` in front of it, glued by hand in `epoch_end`: SequentialLR does
        # not accept ReduceLROnPlateau, whose step() needs the metric.
        self._scheduler = scheduler
        self._warmup = warmup
        self._warmup_epochs = warmup_epochs
        self._plateau = plateau
        self.epochs_done = 0

    def epoch_end(self, val_loss: float) -> None:
        """Set the next epoch's LR; `val_loss` is the epoch just finished's validation loss."""
        self.epochs_done += 1
        if self._scheduler is not None:
            self._scheduler.step()
        elif self.epochs_done <= self._warmup_epochs:
            # Still warming up (the w-th step lands on lr0): the LR rose on purpose, so these
            # epochs' losses say nothing about a plateau at lr0.
            assert self._warmup is not None
            self._warmup.step()
        else:
            assert self._plateau is not None
            self._plateau.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's progress: plain values and torch's own scheduler state dicts (loadable
        with torch.load(weights_only=True)). The optimizer's LR itself lives in the optimizer's
        state dict."""
        return {
            "epochs_done": self.epochs_done,
            "scheduler": None if self._scheduler is None else self._scheduler.state_dict(),
            "warmup": None if self._warmup is None else self._warmup.state_dict(),
            "plateau": None if self._plateau is None else self._plateau.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of a schedule built from the same hyperparameters."""
        for name in ("scheduler", "warmup", "plateau"):
            mine, saved = getattr(self, f"_{name}"), state.get(name)
            if (mine is None) != (saved is None):
                raise ValueError(f"the saved LR schedule does not match this one ({name})")
            if mine is not None:
                mine.load_state_dict(saved)
        self.epochs_done = int(state["epochs_done"])


def build_schedule(optimizer: torch.optim.Optimizer, hp: dict[str, Any], epochs: int) -> LrSchedule:
    """The schedule `hp["schedule"]` for a run of `epochs` epochs, with its optional warmup.

    On return every param group's LR is already epoch 1's; after the k-th `epoch_end` it is
    epoch k+1's. The formulas are in this module's docstring. Assumes one LR for all param
    groups (build_optimizer makes a single group): cosine's floor is taken from group 0.
    """
    name = hp["schedule"]
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    warmup_epochs = int(hp["warmup_epochs"])
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    # The last epoch's t; at least 1 so a run with a single epoch after warmup has a
    # well-defined (not yet decayed) lr0 instead of a division by zero.
    last_t = max(epochs - warmup_epochs - 1, 1)

    warmup = None
    if warmup_epochs > 0:
        # Epoch e <= w runs at lr0 * e / (w + 1): evenly spaced steps up to lr0 at epoch w + 1,
        # and never an LR of 0 (a wasted epoch).
        warmup = LinearLR(optimizer, start_factor=1 / (warmup_epochs + 1), end_factor=1.0, total_iters=warmup_epochs)

    if name == "plateau":
        # "Divide the LR by 2 to 10 when the validation loss stops improving" (HYPERPARAMETERS.md,
        # LR schedules): plateau_factor 0.5 by default. Does not touch the LR until it reduces it.
        plateau = ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=float(hp["plateau_factor"]),
            patience=int(hp["plateau_patience"]),
        )
        return LrSchedule(warmup=warmup, warmup_epochs=warmup_epochs, plateau=plateau)

    main = _main_scheduler(optimizer, name, hp, last_t)
    if warmup is None:
        return LrSchedule(scheduler=main)
    # SequentialLR restores lr0 and restarts the warmup (undoing `main`'s construction step);
    # at its milestone it puts `main` at t = 0 (lr0), in closed form.
    return LrSchedule(scheduler=SequentialLR(optimizer, schedulers=[warmup, main], milestones=[warmup_epochs]))


def _main_scheduler(optimizer: torch.optim.Optimizer, name: str, hp: dict[str, Any], last_t: int) -> LRScheduler:
    """The schedule after warmup, at t = 0 on construction."""
    if name == "constant":
        return LambdaLR(optimizer, lambda t: 1.0)
    if name == "time_based":
        # lr = lr0 / (1 + k·t) (HYPERPARAMETERS.md, LR schedules); k = 0 is constant.
        k = float(hp["lr_decay"])
        return LambdaLR(optimizer, lambda t: 1.0 / (1.0 + k * t))
    if name == "linear":
        # "Linear decay from the initial LR to a floor at step τ, then constant: the most
        # common form" (HYPERPARAMETERS.md); τ = decay_epochs, 0 meaning the last epoch.
        decay_epochs = int(hp["decay_epochs"]) or last_t
        return LinearLR(optimizer, start_factor=1.0, end_factor=float(hp["lr_floor"]), total_iters=decay_epochs)
    if name in ("exponential", "step"):
        gamma = hp["gamma"]
        gamma = DEFAULT_GAMMA[name] if gamma is None else float(gamma)
        if name == "exponential":
            return ExponentialLR(optimizer, gamma=gamma)
        return StepLR(optimizer, step_size=int(hp["step_size"]), gamma=gamma)
    if name == "cosine":
        # Reaches lr0 * lr_floor at the last epoch (t = last_t), not after it.
        lr0 = float(optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"]))
        return CosineAnnealingLR(optimizer, T_max=last_t, eta_min=lr0 * float(hp["lr_floor"]))
    raise AssertionError(f"schedule {name!r} has no scheduler")  # SCHEDULES was checked


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    """The current learning rate of param group 0, for reporting."""
    return float(optimizer.param_groups[0]["lr"])
