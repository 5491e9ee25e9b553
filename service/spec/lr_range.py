"""Learning-rate sensitivity: the lr sweep (a log grid, all else fixed) and the LR range test
(one run that raises the lr exponentially per batch), and what their curves say.

HYPERPARAMETERS.md: tune the learning rate first, on a log scale; final loss against lr is
U-shaped, and the good region sits just below where training starts to blow up. The math here
is pure Python so the service (which reads the curves) and the worker (which runs the range
test) share one definition of the lr at each step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import Field, model_validator

from service.spec.strict import Strict


class LrSweep(Strict):
    """`kind: lr_sweep`: every lr of a log grid from `low` to `high`, `seeds` runs each."""

    low: float = Field(1e-6, gt=0, le=100)
    high: float = Field(1e-1, gt=0, le=100)
    points_per_decade: int = Field(3, ge=1, le=20)
    seeds: int = Field(1, ge=1, le=20)
    # The "good range": the lrs around the best whose mean loss is within this fraction of the best.
    tolerance: float = Field(0.1, gt=0, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> LrSweep:
        if self.low >= self.high:
            raise ValueError(f"low must be < high, got low={self.low} high={self.high}")
        if (points := self._intervals() + 1) > 400:
            raise ValueError(f"the grid has {points} points; at most 400 (fewer points per decade or a narrower range)")
        return self

    def _decades(self) -> float:
        # A difference of logs, not the log of a ratio: high / low overflows to inf for a
        # subnormal low (5e-324), and the grid's size must be known before it is built.
        return math.log10(self.high) - math.log10(self.low)

    def _intervals(self) -> int:
        return max(1, round(self._decades() * self.points_per_decade))

    def grid(self) -> list[float]:
        """The lrs, `points_per_decade` per factor of 10, both ends included."""
        decades, n = self._decades(), self._intervals()
        start = math.log10(self.low)
        points = [_round(10 ** (start + i * decades / n)) for i in range(n + 1)]
        # Rounding must not push the ends outside the distribution Optuna records.
        points[0], points[-1] = self.low, self.high
        return points


class LrFinder(Strict):
    """`kind: lr_finder` (and `auto_lr_range`): the LR range test (Smith 2015; fastai's lr_find)."""

    low: float = Field(1e-7, gt=0, le=100)
    high: float = Field(10.0, gt=0, le=1000)
    steps: int = Field(100, ge=10, le=10_000, description="batches, the lr raised by a constant factor after each")
    smoothing: float = Field(0.98, ge=0, lt=1, description="exponential moving average of the batch loss (bias-corrected)")
    # The run stops when the smoothed loss exceeds this many times its minimum so far (or is not finite).
    divergence_factor: float = Field(4.0, gt=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> LrFinder:
        if self.low >= self.high:
            raise ValueError(f"low must be < high, got low={self.low} high={self.high}")
        return self

    def lr_at(self, step: int) -> float:
        """The lr of batch `step` (0-based)."""
        # In logs, for the same reason as LrSweep._decades: high / low may overflow.
        log_low, log_high = math.log(self.low), math.log(self.high)
        return min(self.high, max(self.low, math.exp(log_low + (log_high - log_low) * step / (self.steps - 1))))


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def smooth(losses: Sequence[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average, as the range test records it."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest_range(lrs: Sequence[float], losses: Sequence[float], skip_start: int = 5) -> dict[str, float] | None:
    """From a range test's smoothed losses: the lr of the steepest descent (loss falling fastest
    per factor of lr) up to the lr of the lowest loss, the last point before the run turns to
    divergence. None when the curve is too short to say anything."""
    points = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss) and lr > 0]
    if len(points) < 3:
        return None
    i_min = min(range(len(points)), key=lambda i: points[i][1])
    start = min(skip_start, max(0, i_min - 2))
    slopes = [
        ((points[i + 1][1] - points[i - 1][1]) / (math.log10(points[i + 1][0]) - math.log10(points[i - 1][0])), i)
        for i in range(max(1, start), min(i_min, len(points) - 1))
    ]
    high = points[i_min][0]
    steepest = points[min(slopes)[1]][0] if slopes else high / 10
    low = steepest if steepest < high else high / 10
    diverged = next((lr for lr, loss in points[i_min:] if loss > 4 * points[i_min][1]), points[-1][0])
    return {
        "low": _round(low),
        "high": _round(high),
        "steepest_lr": _round(steepest),
        "min_loss_lr": _round(high),
        "min_loss": points[i_min][1],
        "divergence_lr": _round(diverged),
    }


def summarize_sweep(
    runs: Sequence[dict[str, Any]], direction: str, tolerance: float, grid: Sequence[float] | None = None
) -> dict[str, Any]:
    """The U-curve of a sweep from its runs: `{lr, value|None, diverged: bool, initial: float|None}`.

    Per lr: the mean objective over its finished seeds. A diverged run has no value; an lr is
    diverged when any of its runs diverged. `best_lr` is the lr with the best mean; `range` the
    contiguous lrs around it whose mean is within `tolerance` (relative) of the best;
    `divergence_lr` the lowest lr above the best that diverged or ended worse than the untrained
    model (None when the sweep never got there)."""
    by_lr: dict[float, dict[str, Any]] = {}
    for lr in grid or ():
        by_lr[lr] = {"lr": lr, "values": [], "diverged": 0, "initial": []}
    for run in runs:
        p = by_lr.setdefault(run["lr"], {"lr": run["lr"], "values": [], "diverged": 0, "initial": []})
        if run.get("diverged"):
            p["diverged"] += 1
        elif run.get("value") is not None and math.isfinite(run["value"]):
            p["values"].append(run["value"])
        if run.get("initial") is not None:
            p["initial"].append(run["initial"])
    points = []
    for lr in sorted(by_lr):
        p = by_lr[lr]
        mean = sum(p["values"]) / len(p["values"]) if p["values"] else None
        initial = sum(p["initial"]) / len(p["initial"]) if p["initial"] else None
        points.append({"lr": lr, "mean": mean, "values": p["values"], "diverged": p["diverged"], "initial_loss": initial})
    sign = 1.0 if direction == "minimize" else -1.0
    scored = [i for i, p in enumerate(points) if p["mean"] is not None and not p["diverged"]]
    result: dict[str, Any] = {"points": points, "tolerance": tolerance, "best_lr": None, "best_value": None,
                              "range": None, "divergence_lr": None, "interior": False, "complete": False}
    if not scored:
        return result
    best = min(scored, key=lambda i: sign * points[i]["mean"])
    best_value = points[best]["mean"]
    limit = best_value + sign * tolerance * abs(best_value)

    def good(i: int) -> bool:
        p = points[i]
        return p["mean"] is not None and not p["diverged"] and sign * p["mean"] <= sign * limit

    lo = hi = best
    while lo - 1 >= 0 and good(lo - 1):
        lo -= 1
    while hi + 1 < len(points) and good(hi + 1):
        hi += 1
    divergence = None
    for p in points[best + 1 :]:
        worse_than_start = p["mean"] is not None and p["initial_loss"] is not None and sign * p["mean"] >= sign * p["initial_loss"]
        if p["diverged"] or worse_than_start:
            divergence = p["lr"]
            break
    result.update(
        best_lr=points[best]["lr"],
        best_value=best_value,
        range=[points[lo]["lr"], points[hi]["lr"]],
        divergence_lr=divergence,
        # The U-curve is closed when the best is not at either end of the grid.
        interior=0 < best < len(points) - 1,
    )
    return result


def narrow(original: tuple[float, float], suggestion: dict[str, float]) -> tuple[float, float]:
    """The suggested lr range clipped to the study's original one: always a sub-range of it.

    When the suggestion misses the original range, or clipping leaves (nearly) nothing, the
    result is the factor-of-10 window of the original range nearest to the suggestion."""
    lo0, hi0 = original
    lo, hi = max(lo0, suggestion["low"]), min(hi0, suggestion["high"])
    if hi / lo >= 1.5:
        return _round_in(lo, lo0, hi0), _round_in(hi, lo0, hi0)
    if hi0 / lo0 <= 10:  # the original range is no wider than that window
        return lo0, hi0
    centre = math.sqrt(suggestion["low"] * suggestion["high"])
    lo, hi = centre / math.sqrt(10), centre * math.sqrt(10)
    if hi > hi0:
        lo, hi = hi0 / 10, hi0
    elif lo < lo0:
        lo, hi = lo0, lo0 * 10
    return _round_in(lo, lo0, hi0), _round_in(hi, lo0, hi0)


def _round_in(x: float, lo: float, hi: float) -> float:
    return min(max(_round(x), lo), hi)
