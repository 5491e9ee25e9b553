"""The `pareto` plot of a multi-objective study: every complete trial by its first two objectives,
the Pareto front (Optuna's best_trials) joined and highlighted, infeasible trials apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from service.engine.optuna_adapter.internals import pareto_front
from service.engine.studies import feasible
from service.spec import StudySpec


class NoFront(Exception):
    """Nothing to draw yet (plots.py turns it into its NothingToPlot)."""


def draw_pareto(fig: Figure, ax: Any, spec: StudySpec, trials: Sequence[FrozenTrial], label: Any) -> None:
    if not spec.objectives:
        raise NoFront("the pareto plot is for studies with several objectives (`objectives`)")
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values), key=lambda t: t.number)
    if not done:
        raise NoFront("no complete trial yet: the pareto plot needs at least one")
    directions = [StudyDirection.MINIMIZE if d == "minimize" else StudyDirection.MAXIMIZE for d in spec.directions()]
    front = {t.number for t in pareto_front(done, directions)}
    x_name, y_name = spec.objectives[0].name, spec.objectives[1].name
    groups = {
        "trials": [t for t in done if t.number not in front and feasible(t) is not False],
        "infeasible (breaks a constraint)": [t for t in done if feasible(t) is False],
        "Pareto front": [t for t in done if t.number in front],
    }
    styles = {"trials": ("o", "tab:blue", 20), "infeasible (breaks a constraint)": ("x", "tab:gray", 24), "Pareto front": ("*", "tab:red", 120)}
    for name, group in groups.items():
        if group:
            marker, color, size = styles[name]
            ax.scatter([t.values[0] for t in group], [t.values[1] for t in group], marker=marker, s=size, color=color, zorder=3, label=name)
    points = sorted((t.values[0], t.values[1]) for t in groups["Pareto front"])
    if len(points) > 1:
        ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:red", lw=1, alpha=0.6, zorder=2)
    more = f" (first two of {len(spec.objectives)} objectives)" if len(spec.objectives) > 2 else ""
    ax.set(
        xlabel=f"{label(x_name)} ({spec.objectives[0].direction})",
        ylabel=f"{label(y_name)} ({spec.objectives[1].direction})",
        title=f"Pareto front: {label(spec.name)}{more}",
    )
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
