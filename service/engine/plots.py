"""Study plots as PNG: history, learning curves, loss against lr, importances, parallel coordinates.

Each plot is drawn on its own matplotlib `Figure` with the Agg canvas, never through pyplot:
routes run in a thread pool, and pyplot's global "current figure" is not safe to share between
threads (Optuna's own matplotlib plots use pyplot, so we compute with Optuna and draw here).
Every figure is WIDTH x HEIGHT pixels, so clients and tests can rely on the size.

A plot with nothing to show yet raises NothingToPlot (409) before anything is drawn."""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import optuna
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from optuna.distributions import CategoricalDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from service.db.models import StudyRecord
from service.engine import lr_analysis
from service.engine.pareto_plot import NoFront, draw_pareto
from service.engine.storage import optuna_errors
from service.engine.studies import feasible, spec_of
from service.errors import Conflict
from service.spec import StudySpec

PlotKind = Literal["history", "curves", "lr", "importance", "parallel", "pareto"]
KINDS: tuple[str, ...] = get_args(PlotKind)
WIDTH, HEIGHT, DPI = 800, 500, 100
# The kinds that do not read one objective value per trial.
ONE_OR_MORE_OBJECTIVES = ("curves", "pareto")

STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:green"}


_SCRATCH = "hpo-importance"


class _QuietScratchStudies(logging.Filter):
    """Optuna logs every in-memory study it creates; ours (one per importance) is just scratch."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _SCRATCH not in record.getMessage()


logging.getLogger("optuna.storages._in_memory").addFilter(_QuietScratchStudies())


class NothingToPlot(Conflict):
    """The study has no data for this plot yet (409): not an error in the request."""

    code = "nothing_to_plot"


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


# --------------------------------------------------------------------------- helpers


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials with a finite objective, in trial order."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value)]
    return sorted(done, key=lambda t: t.number)


def _text(value: Any, limit: int = 40) -> str:
    """User input as a matplotlib label: '$' would start mathtext (and fail on bad TeX)."""
    s = value if isinstance(value, str) else f"{value:.4g}" if _finite(value) else str(value)
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _auto_yscale(ax: Any, values: Sequence[float]) -> None:
    """Losses that span orders of magnitude (a diverging run next to good ones) read on a log axis."""
    positive = [v for v in values if _finite(v)]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 100:
        ax.set_yscale("log")


def _top_marks(ax: Any, xs: Sequence[float], label: str, color: str = "tab:red") -> None:
    """× at the top edge of the axes: runs with no final value to place (diverged, failed)."""
    if xs:
        ax.scatter(xs, [0.97] * len(xs), marker="x", s=50, color=color, transform=ax.get_xaxis_transform(),
                   clip_on=False, zorder=4, label=label)
        # Autoscaling ignores artists in axes coordinates: widen the x range to include them.
        ax.update_datalim([(x, 0.0) for x in xs], updatey=False)


# --------------------------------------------------------------------------- history and curves


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


# --------------------------------------------------------------------------- loss against lr


def _lr(fig: Figure, ax: Any, spec: StudySpec, trials: list[FrozenTrial], extra: dict[str, Any]) -> None:
    if spec.kind == "lr_sweep":
        _lr_sweep(ax, spec, lr_analysis.sweep_result(spec, trials))
    elif spec.kind == "lr_finder":
        _lr_finder(ax, spec, lr_analysis.finder_result(spec, trials))
    else:
        _lr_search(ax, spec, trials, extra.get("lr_range"))
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")


def _lr_search(ax: Any, spec: StudySpec, trials: list[FrozenTrial], lr_range: dict[str, Any] | None) -> None:
    with_lr = [t for t in trials if _finite(t.params.get("lr")) and t.params["lr"] > 0]
    done = _complete(with_lr)
    # Pruned by the median pruner: its last reported loss says where it was heading. Diverged or
    # failed: no loss worth placing, so a mark at the top of the axis.
    pruned = [t for t in with_lr if t.state == TrialState.PRUNED and not lr_analysis.diverged(t) and _last_value(t) is not None]
    kept = {t.number for t in pruned}
    lost = [t for t in with_lr if t.state in (TrialState.PRUNED, TrialState.FAIL) and t.number not in kept]
    if not done and not pruned and not lost:
        if "lr" not in spec.search_space():
            raise NothingToPlot("this study does not search `lr`: there is no loss-against-lr curve to draw")
        raise NothingToPlot("no trial with an lr has finished yet")
    if done:
        ax.scatter([t.params["lr"] for t in done], [t.value for t in done], s=28, color="tab:blue", zorder=3, label="complete")
        pick = min if spec.direction == "minimize" else max
        best = pick(done, key=lambda t: t.value)
        ax.scatter([best.params["lr"]], [best.value], marker="*", s=220, color="gold", edgecolor="black", zorder=5, label="best")
    if pruned:
        ax.scatter([t.params["lr"] for t in pruned], [_last_value(t) for t in pruned], s=28, facecolor="none",
                   edgecolor="tab:orange", zorder=3, label="pruned (last reported)")
    _top_marks(ax, [t.params["lr"] for t in lost], "diverged / failed")
    narrowed = (lr_range or {}).get("narrowed")
    if spec.auto_lr_range and narrowed:
        ax.axvspan(narrowed[0], narrowed[1], color="tab:green", alpha=0.12, label="range from the LR range test")
    _auto_yscale(ax, [t.value for t in done] + [_last_value(t) for t in pruned])  # type: ignore[misc]
    ax.set(xlabel="learning rate (log)", ylabel=f"objective ({spec.direction})", title=f"Objective against lr: {_text(spec.name)}")


def _last_value(t: FrozenTrial) -> float | None:
    points = [(s, v) for s, v in t.intermediate_values.items() if _finite(v)]
    return max(points)[1] if points else None


def _lr_sweep(ax: Any, spec: StudySpec, result: dict[str, Any] | None) -> None:
    points = (result or {}).get("points") or []
    if not any(p["values"] or p["diverged"] for p in points):
        raise NothingToPlot("no run of the lr sweep has finished yet")
    assert result is not None
    xs = [p["lr"] for p in points for _ in p["values"]]
    ys = [v for p in points for v in p["values"]]
    ax.scatter(xs, ys, s=18, color="tab:blue", alpha=0.6, zorder=3, label="runs")
    means = [(p["lr"], p["mean"]) for p in points if p["mean"] is not None]
    if means:
        ax.plot([m[0] for m in means], [m[1] for m in means], color="tab:blue", lw=2, label="mean")
    _top_marks(ax, [p["lr"] for p in points if p["diverged"]], "diverged")
    if result.get("range"):
        lo, hi = result["range"]
        ax.axvspan(lo, hi if hi > lo else lo * 1.0001, color="tab:green", alpha=0.15, label=f"within {result['tolerance']:.0%} of best")
    if result.get("best_lr"):
        ax.axvline(result["best_lr"], color="tab:green", lw=1.5, label=f"best lr {result['best_lr']:.3g}")
    if result.get("divergence_lr"):
        ax.axvline(result["divergence_lr"], color="tab:red", ls="--", lw=1.5, label=f"diverges from {result['divergence_lr']:.3g}")
    initial = [p["initial_loss"] for p in points if _finite(p.get("initial_loss"))]
    if initial:
        ax.axhline(sum(initial) / len(initial), color="grey", ls=":", lw=1, label="untrained model")
    _auto_yscale(ax, ys)
    ax.set(xlabel="learning rate (log)", ylabel=f"objective ({spec.direction})", title=f"lr sweep: {_text(spec.name)}")


def _lr_finder(ax: Any, spec: StudySpec, result: dict[str, Any] | None) -> None:
    result = result or {}
    pairs = [(lr, loss) for lr, loss in zip(result.get("lrs") or [], result.get("losses") or []) if lr > 0 and _finite(loss)]
    if not pairs:
        raise NothingToPlot("the LR range test has not reported a loss yet")
    lrs, losses = [p[0] for p in pairs], [p[1] for p in pairs]
    state = result.get("state", "complete")
    ax.plot(lrs, losses, color="tab:blue", lw=1.8, label="smoothed loss" + ("" if state == "complete" else f" ({state})"))
    suggestion = result.get("suggestion")
    if suggestion:
        ax.axvspan(suggestion["low"], suggestion["high"], color="tab:green", alpha=0.15,
                   label=f"suggested {suggestion['low']:.3g} .. {suggestion['high']:.3g}")
        ax.axvline(suggestion["steepest_lr"], color="tab:green", ls=":", lw=1.2, label="steepest descent")
        ax.axvline(suggestion["divergence_lr"], color="tab:red", ls="--", lw=1.2, label="diverges")
    # The loss explodes at the end of a range test; a y axis that followed it would flatten the
    # part that matters. Show up to a few times the minimum (or the starting loss if higher).
    low, first = min(losses), losses[0]
    top = min(max(losses), max(first, 3 * low) if low > 0 else first)
    if top > low:
        margin = 0.08 * (top - low)
        ax.set_ylim(low - margin, top + margin)
    ax.set(xlabel="learning rate (log)", ylabel="loss (smoothed)", title=f"LR range test: {_text(spec.name)}")


# --------------------------------------------------------------------------- importance and parallel


# Optuna's fANOVA grows faster than linearly with the trials (~5 s for 400, ~50 s for 1500):
# above this many complete trials it runs on an evenly spaced sample of them.
IMPORTANCE_MAX_TRIALS = 300


def importance_sample(trials: Sequence[FrozenTrial]) -> tuple[list[FrozenTrial], int]:
    """The complete trials fANOVA runs on, and how many complete trials there are in all."""
    done = _complete(trials)
    k = IMPORTANCE_MAX_TRIALS
    if len(done) <= k:
        return done, len(done)
    # Evenly spaced over the trial numbers: deterministic, and early and late trials both count.
    return [done[round(i * (len(done) - 1) / (k - 1))] for i in range(k)], len(done)


def importances(spec: StudySpec, trials: Sequence[FrozenTrial]) -> dict[str, float]:
    """fANOVA importances (Optuna's, seeded, so the same trials give the same numbers)."""
    if spec.objectives:
        raise NothingToPlot("importances are computed for one objective; this study has several")
    done, _ = importance_sample(trials)
    if len(done) < 2:
        raise NothingToPlot(f"importance needs at least 2 complete trials; this study has {len(done)}")
    names = {n for t in done for n in t.params}
    if not any(len({repr(t.params[n]) for t in done if n in t.params}) > 1 for n in names):
        raise NothingToPlot("importance needs a parameter that varies across the complete trials; none does")
    if len({t.value for t in done}) < 2:
        raise NothingToPlot("every complete trial has the same objective value: no parameter explains anything")
    # An in-memory copy of the trials: no database, no sampler, and nothing written anywhere.
    storage = optuna.storages.InMemoryStorage()
    direction = optuna.study.StudyDirection.MINIMIZE if spec.direction == "minimize" else optuna.study.StudyDirection.MAXIMIZE
    storage.create_new_study([direction], _SCRATCH)
    study = optuna.Study(study_name=_SCRATCH, storage=storage)
    for t in done:
        try:
            study.add_trial(t)
        except ValueError:
            continue  # a param outside its recorded distribution: skip the trial, not the plot
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:
        raise NothingToPlot(f"fANOVA could not compute importances from these trials: {exc}") from exc
    result = {k: float(v) for k, v in result.items() if _finite(v)}
    if not result:
        raise NothingToPlot("fANOVA found no parameter shared by all complete trials")
    return result


def _importance(fig: Figure, ax: Any, spec: StudySpec, trials: list[FrozenTrial], extra: dict[str, Any]) -> None:
    found = extra.get("importances") or importances(spec, trials)
    ordered = sorted(found.items(), key=lambda kv: kv[1])  # barh draws bottom-up: most important on top
    names, values = [_text(k) for k, _ in ordered], [v for _, v in ordered]
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3)
    ax.set_xlim(0, max(max(values) * 1.15, 0.05))
    used, total = importance_sample(trials)
    sample = f" on {len(used)} of {total} complete trials" if len(used) < total else ""
    ax.set(xlabel=f"importance (fANOVA, normalized{sample})", title=f"Parameter importances: {_text(spec.name)}")
    ax.grid(alpha=0.3, axis="x")


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
