"""The pruning rule the service judges itself: Optuna's MedianPruner and PercentilePruner, built
from the study definition's pruner (spec.pruner), with no Optuna object and none of its private
helpers.

It is `optuna.pruners.PercentilePruner.prune` (Optuna 5.0) rule for rule, except for what it
reads: the completed trials' values at the judged step come ready as an array (AtStep, kept per
step by the trial view as trials complete) instead of being collected from every completed
trial, and the judged trial's own curve comes as a summary (CurveSummary: its last two steps and
its best values), which a report's batch reads from the database without reading the curve.
tests/test_pruning.py replays curves through this rule and through Optuna's pruners, decision
for decision. Any other pruner kind (successive halving, Hyperband, threshold, patience) is
Optuna's own, run on the study (optuna_pruning.py): their rules read more than this."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from service.spec.pruners import MedianPruner, NoPruner, PercentilePruner, Pruner

_EMPTY = np.empty(0, dtype=float)


@dataclass(frozen=True)
class AtStep:
    """The completed trials as a percentile pruner sees them from one step: how many there are,
    and the values at that step of those that reached it."""

    n_completed: int
    values: np.ndarray = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class CurveSummary:
    """What a percentile pruner reads of the judged trial's own curve: its last step, the highest
    step before it (the interval check) and its best values (np.nanmin / np.nanmax over every
    value: NaN only when all are NaN)."""

    last_step: int | None
    previous_step: int = -1
    best_min: float = math.nan
    best_max: float = math.nan

    @classmethod
    def of(cls, values: dict[int, float]) -> CurveSummary:
        if not values:
            return cls(None)
        steps = sorted(values, reverse=True)
        kept = [v for v in values.values() if not math.isnan(v)]
        return cls(steps[0], steps[1] if len(steps) > 1 else -1, min(kept, default=math.nan), max(kept, default=math.nan))

    def with_value(self, step: int, value: float) -> CurveSummary:
        """The summary once `step`, which the curve does not have, is added with `value`."""
        if self.last_step is None:
            return CurveSummary.of({step: value})
        if step > self.last_step:
            last, previous = step, self.last_step
        else:
            last, previous = self.last_step, max(self.previous_step, step)
        if math.isnan(value):
            return CurveSummary(last, previous, self.best_min, self.best_max)
        return CurveSummary(last, previous, _nan_min(self.best_min, value), _nan_max(self.best_max, value))

    def best(self, maximize: bool) -> float:
        return self.best_max if maximize else self.best_min


def _nan_min(a: float, b: float) -> float:
    return b if math.isnan(a) else min(a, b)


def _nan_max(a: float, b: float) -> float:
    return b if math.isnan(a) else max(a, b)


@dataclass(frozen=True)
class PercentileRule:
    """A median (percentile 50) or percentile pruner's rule, for one direction."""

    percentile: float
    n_startup_trials: int
    n_warmup_steps: int
    interval_steps: int
    n_min_trials: int
    maximize: bool

    def prune(self, curve: CurveSummary, at_step: AtStep) -> bool:
        n_trials = at_step.n_completed
        if n_trials == 0 or n_trials < self.n_startup_trials:
            return False
        step = curve.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        if not self._first_in_interval(step, curve.previous_step):
            return False
        best = curve.best(self.maximize)
        if math.isnan(best):
            return True
        if len(at_step.values) < self.n_min_trials:
            return False
        if np.isnan(at_step.values).all():
            return False  # Optuna's nanpercentile is NaN then (with a warning, which threads should not toggle)
        percentile = 100 - self.percentile if self.maximize else self.percentile
        p = float(np.nanpercentile(at_step.values, percentile))
        return best < p if self.maximize else best > p

    def _first_in_interval(self, step: int, previous_step: int) -> bool:
        """Whether `step` is the trial's first report at or past its latest pruning step (the
        warm-up, then every interval_steps): a trial is judged once per interval."""
        nearest_lower = (step - self.n_warmup_steps) // self.interval_steps * self.interval_steps + self.n_warmup_steps
        return previous_step < nearest_lower


class NeverPrune:
    """The `none` pruner."""

    def prune(self, curve: CurveSummary, at_step: AtStep) -> bool:
        return False


FlatRule = PercentileRule | NeverPrune


def flat_rule(pruner: Pruner, direction: str) -> FlatRule | None:
    """The rule this module judges for a study's pruner, or None: Optuna's own pruner judges it
    (optuna_pruning.py)."""
    if isinstance(pruner, NoPruner):
        return NeverPrune()
    if isinstance(pruner, (MedianPruner, PercentilePruner)):
        return PercentileRule(
            percentile=pruner.percentile if isinstance(pruner, PercentilePruner) else 50.0,
            n_startup_trials=pruner.n_startup_trials,
            n_warmup_steps=pruner.n_warmup_steps,
            interval_steps=pruner.interval_steps,
            n_min_trials=pruner.n_min_trials,
            maximize=direction == "maximize",
        )
    return None
