"""The `parallel` plot: parallel coordinates of the complete trials, an axis per parameter and
one for the objective, each trial a line coloured by its objective."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial

from service.engine.plot_helpers import NothingToPlot, _complete, _finite, _text
from service.spec import StudySpec


@dataclass
class _Column:
    name: str
    values: list[float]  # per trial, normalized to [0, 1]; NaN where the trial lacks the param
    ticks: list[tuple[float, str]]  # labels along the axis at normalized positions


def _column(name: str, trials: list[FrozenTrial], raw: Callable[[FrozenTrial], Any]) -> _Column:
    dists = [t.distributions[name] for t in trials if name in t.distributions]
    if any(isinstance(d, CategoricalDistribution) for d in dists):
        # Categories by index, in the order the distributions list them.
        labels: list[str] = []
        for d in dists:
            for c in d.choices:  # type: ignore[attr-defined]
                if str(c) not in labels:
                    labels.append(str(c))
        span = max(len(labels) - 1, 1)
        vals = [labels.index(str(raw(t))) / span if str(raw(t)) in labels else math.nan for t in trials]
        step = max(1, len(labels) // 10)
        return _Column(name, vals, [(i / span, _text(c, 16)) for i, c in enumerate(labels) if i % step == 0])
    log = any(getattr(d, "log", False) for d in dists)

    def number(x: Any) -> float:
        if not _finite(x) or (log and x <= 0):
            return math.nan
        return math.log10(x) if log else float(x)

    xs = [number(raw(t)) for t in trials]
    present = [x for x in xs if not math.isnan(x)]
    if not present:
        return _Column(name, [math.nan] * len(trials), [])
    lo, hi = min(present), max(present)
    back = (lambda v: 10**v) if log else (lambda v: v)
    if hi == lo:
        return _Column(name, [0.5 if not math.isnan(x) else math.nan for x in xs], [(0.5, _text(back(lo), 12))])
    return _Column(name, [(x - lo) / (hi - lo) for x in xs], [(0.0, _text(back(lo), 12)), (1.0, _text(back(hi), 12))])


PARALLEL_MAX_TRIALS = 1000


def _parallel(fig: Figure, ax: Any, spec: StudySpec, trials: list[FrozenTrial], extra: dict[str, Any]) -> None:
    done = _complete(trials)
    names = sorted({n for t in done for n in t.params})
    if not done or not names:
        raise NothingToPlot("no complete trial with parameters yet: nothing to draw in parallel coordinates")
    # Worst first, so the best lines are drawn last, on top.
    done.sort(key=lambda t: t.value, reverse=spec.direction == "minimize")  # type: ignore[arg-type, return-value]
    # One line per trial: a huge study draws its best PARALLEL_MAX_TRIALS (the review's finding 15).
    total = len(done)
    done = done[-PARALLEL_MAX_TRIALS:]
    columns = [_column(n, done, lambda t, n=n: t.params.get(n)) for n in names]
    columns.append(_column("objective", done, lambda t: t.value))
    values = [float(t.value) for t in done]  # type: ignore[arg-type]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    cmap = colormaps["viridis_r" if spec.direction == "minimize" else "viridis"]
    xs = list(range(len(columns)))
    for i, value in enumerate(values):
        ax.plot(xs, [c.values[i] for c in columns], color=cmap(norm(value)), lw=1.2, alpha=0.8)
    for x, column in zip(xs, columns):
        ax.axvline(x, color="black", lw=0.8)
        for y, label in column.ticks:
            ax.text(x + 0.03, y, label, fontsize=7, va="center", ha="left",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(xs, [_text(c.name, 20) for c in columns], rotation=30 if len(columns) > 6 else 0, ha="right" if len(columns) > 6 else "center")
    ax.set_xlim(-0.2, len(columns) - 0.6)
    ax.set_ylim(-0.08, 1.08)
    ax.set_yticks([])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"objective ({spec.direction})")
    shown = f" (best {len(done)} of {total} trials)" if len(done) < total else ""
    ax.set_title(f"Parallel coordinates: {_text(spec.name)}{shown}")
