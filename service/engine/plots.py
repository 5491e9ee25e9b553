"""Study plots as PNG: history, learning curves, loss against lr, importances, parallel coordinates.

Each plot is drawn on its own matplotlib `Figure` with the Agg canvas, never through pyplot:
routes run in a thread pool, and pyplot's global "current figure" is not safe to share between
threads (Optuna's own matplotlib plots use pyplot, so we compute with Optuna and draw here).
Every figure is WIDTH x HEIGHT pixels, so clients and tests can rely on the size.

A plot with nothing to show yet raises NothingToPlot (409) before anything is drawn.

Each kind is drawn by its own module (history_plot, curves_plot, lr_plot, importance_plot,
parallel_plot, pareto_plot); this one loads a study's inputs and renders a kind as a PNG."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from service.db.models import StudyRecord
from service.engine import lr_analysis
from service.engine.curves_plot import STATE_COLORS, _curves
from service.engine.history_plot import _history
from service.engine.importance_plot import IMPORTANCE_MAX_TRIALS, _importance, importance_sample, importances
from service.engine.lr_plot import _lr
from service.engine.parallel_plot import PARALLEL_MAX_TRIALS, _parallel
from service.engine.pareto_plot import NoFront, draw_pareto
from service.engine.plot_helpers import NothingToPlot, _text
from service.engine.storage import optuna_errors
from service.engine.studies import spec_of
from service.spec import StudySpec

__all__ = [
    "DPI",
    "HEIGHT",
    "IMPORTANCE_MAX_TRIALS",
    "KINDS",
    "ONE_OR_MORE_OBJECTIVES",
    "PARALLEL_MAX_TRIALS",
    "STATE_COLORS",
    "WIDTH",
    "NothingToPlot",
    "PlotInputs",
    "PlotKind",
    "importance_sample",
    "importances",
    "load",
    "render",
]

PlotKind = Literal["history", "curves", "lr", "importance", "parallel", "pareto"]
KINDS: tuple[str, ...] = get_args(PlotKind)
WIDTH, HEIGHT, DPI = 800, 500, 100
# The kinds that do not read one objective value per trial.
ONE_OR_MORE_OBJECTIVES = ("curves", "pareto")


@dataclass
class PlotInputs:
    spec: StudySpec
    trials: list[FrozenTrial]
    # What some plots need besides the trials: `lr_range`, the stored auto_lr_range decision.
    extra: dict[str, Any] = field(default_factory=dict)


def load(storage: BaseStorage, record: StudyRecord) -> PlotInputs:
    """Everything the plots of one study read, in one go, so drawing needs no database."""
    spec = spec_of(record)
    with optuna_errors():
        trials = storage.get_all_trials(storage.get_study_id_from_name(record.optuna_name), deepcopy=False)
    extra: dict[str, Any] = {}
    if spec.auto_lr_range:
        extra["lr_range"] = lr_analysis.stored_lr_range(storage, record)
    return PlotInputs(spec, list(trials), extra)


def render(kind: str, spec: StudySpec, trials: Sequence[FrozenTrial], extra: dict[str, Any] | None = None) -> bytes:
    """The PNG of one plot kind; NothingToPlot when there is nothing to draw yet."""
    draw = _DRAW.get(kind)
    if draw is None:
        raise ValueError(f"kind: unknown plot '{kind}'; one of {', '.join(KINDS)}")
    if spec.objectives and kind not in ONE_OR_MORE_OBJECTIVES:
        raise NothingToPlot(f"a study with several objectives has no single objective to plot as {kind}; see the pareto plot")
    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    draw(figure, figure.add_subplot(), spec, list(trials), extra or {})
    out = io.BytesIO()
    # No bbox_inches="tight": that would change the pixel size from plot to plot.
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _pareto(fig: Figure, ax: Any, spec: StudySpec, trials: list[FrozenTrial], extra: dict[str, Any]) -> None:
    try:
        draw_pareto(fig, ax, spec, trials, _text)
    except NoFront as exc:
        raise NothingToPlot(str(exc)) from None


_DRAW: dict[str, Callable[[Figure, Any, StudySpec, list[FrozenTrial], dict[str, Any]], None]] = {
    "history": _history,
    "curves": _curves,
    "lr": _lr,
    "importance": _importance,
    "parallel": _parallel,
    "pareto": _pareto,
}
