"""The `lr` plot, drawn for what the study is: the objective of each trial against its lr, an lr
sweep's runs per grid point, or an LR range test's loss curve."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from service.engine import lr_analysis
from service.engine.plot_helpers import NothingToPlot, _auto_yscale, _complete, _finite, _text, _top_marks
from service.spec import StudySpec


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
