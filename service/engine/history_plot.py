"""The `history` plot: each complete trial's objective by trial number, and the best so far."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial

from service.engine.plot_helpers import NothingToPlot, _auto_yscale, _complete, _text
from service.engine.studies import feasible
from service.spec import StudySpec


def _history(fig: Figure, ax: Any, spec: StudySpec, trials: list[FrozenTrial], extra: dict[str, Any]) -> None:
    done = _complete(trials)
    if not done:
        raise NothingToPlot("no complete trial yet: the history plot needs at least one")
    xs, ys = [t.number for t in done], [float(t.value) for t in done]  # type: ignore[arg-type]
    # An infeasible trial (it breaks a constraint) is drawn apart and is never the best so far.
    ok = [feasible(t) is not False for t in done]
    pick = min if spec.direction == "minimize" else max
    best_x, best, so_far = [], [], None
    for x, y, kept in zip(xs, ys, ok):
        if kept:
            so_far = y if so_far is None else pick(so_far, y)
        if so_far is not None:
            best_x.append(x)
            best.append(so_far)
    ax.scatter([x for x, k in zip(xs, ok) if k], [y for y, k in zip(ys, ok) if k], s=20, color="tab:blue", zorder=3, label="objective")
    if not all(ok):
        bad = [(x, y) for x, y, k in zip(xs, ys, ok) if not k]
        ax.scatter([x for x, _ in bad], [y for _, y in bad], s=24, marker="x", color="tab:gray", zorder=3, label="infeasible (breaks a constraint)")
    if best:
        ax.step(best_x, best, where="post", color="tab:red", lw=2, label="best so far")
    _auto_yscale(ax, ys)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial number", ylabel=f"objective ({spec.direction})", title=f"Optimization history: {_text(spec.name)}")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
