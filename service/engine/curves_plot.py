"""The `curves` plot: every trial's intermediate values (validation loss per epoch), by state."""

from __future__ import annotations

from typing import Any

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial

from service.engine.plot_helpers import NothingToPlot, _auto_yscale, _finite, _text
from service.spec import StudySpec

STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:green"}


def _curves(fig: Figure, ax: Any, spec: StudySpec, trials: list[FrozenTrial], extra: dict[str, Any]) -> None:
    curves: dict[str, list[list[tuple[float, float]]]] = {s: [] for s in STATE_COLORS}
    for t in sorted(trials, key=lambda t: t.number):
        points = sorted((s, v) for s, v in t.intermediate_values.items() if _finite(v))
        if t.state.name in curves and points:
            curves[t.state.name].append(points)
    drawn = [s for s in STATE_COLORS if curves[s]]
    if not drawn:
        raise NothingToPlot("no trial has reported an intermediate value (validation loss per epoch) yet")
    # One collection per state, not one line per trial: thousands of trials stay fast to draw.
    n = sum(len(c) for c in curves.values())
    few = n <= 50
    # Many curves: fainter lines, so where most of them run shows as the darker band.
    alpha = 0.75 if few else max(0.15, 0.75 * (50 / n) ** 0.5)
    for z, state in enumerate(drawn):
        color = STATE_COLORS[state]
        ax.add_collection(LineCollection(curves[state], colors=color, linewidths=1.2, alpha=alpha, zorder=2 + z))
        # Dots on short curves when there are few; a one-point curve is no line at all, so always a dot.
        dotted = [c for c in curves[state] if len(c) == 1 or (few and len(c) < 30)]
        if dotted:
            ax.scatter([p[0] for c in dotted for p in c], [p[1] for c in dotted for p in c], s=8, color=color, zorder=2 + z)
    if curves["PRUNED"]:
        # Where the pruner (or the divergence guard) cut each run.
        ends = [c[-1] for c in curves["PRUNED"]]
        ax.scatter([e[0] for e in ends], [e[1] for e in ends], marker="x", s=60, color=STATE_COLORS["PRUNED"], zorder=10)
    handles = [Line2D([], [], color=STATE_COLORS[s], label=s.lower()) for s in drawn]
    if curves["PRUNED"]:
        handles.append(Line2D([], [], color=STATE_COLORS["PRUNED"], marker="x", ls="", label="pruned here"))
    ax.autoscale_view()
    _auto_yscale(ax, [p[1] for state in drawn for c in curves[state] for p in c])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step (epoch)", ylabel="intermediate value (validation loss)", title=f"Learning curves: {_text(spec.name)}")
    ax.legend(handles=handles, loc="best")
    ax.grid(alpha=0.3)
