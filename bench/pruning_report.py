"""The figures of bench/pruning.py from its arms' anytime curves: per workload and pruner, the
best loss against no pruning's at shares of the budget, the share of seeds at least as good, the
epochs to reach no pruning's final best; the tables, the SUMMARY line and the plot. Runs saved
with `--save` are read back by `--load` (several files: one per workload, say) without training."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRACTIONS = (0.25, 0.5, 1.0)


@dataclass
class Arm:
    workload: str
    pruner: str
    seed: int
    curve: list[float]  # best COMPLETE objective after each epoch consumed, up to the budget (inf before one)
    epochs: int  # epochs trained, the last trial's beyond the budget included
    trials: int
    complete: int
    pruned: int
    diverged: int
    seconds: float


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """Median and quartiles; an inf (the pruned arm had no complete trial yet) sorts last."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles([min(v, 1e300) for v in ordered], n=4, method="inclusive")
    return statistics.median(ordered), q1 if q1 < 1e300 else math.inf, q3 if q3 < 1e300 else math.inf


def ratio(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b):
        return 1.0  # neither arm has a complete trial yet: neither has found anything
    if math.isinf(a) or b <= 0:
        return math.inf
    return a / b


def reach(curve: list[float], target: float, budget: int) -> int:
    """Epochs until the curve is at or below target; the budget if it never gets there."""
    return next((i + 1 for i, value in enumerate(curve) if value <= target), budget)


def compare(arms: dict[tuple[str, str, int], Arm], workload: str, label: str, seeds: list[int], budget: int) -> dict[str, Any]:
    pairs = [(arms[workload, label, s], arms[workload, "none", s]) for s in seeds]
    out: dict[str, Any] = {}
    for f in FRACTIONS:
        i = max(1, round(f * budget)) - 1
        out[f] = quartiles([ratio(p.curve[i], n.curve[i]) for p, n in pairs])
    out["share"] = sum(p.curve[-1] <= n.curve[-1] for p, n in pairs) / len(pairs)
    reached = [reach(p.curve, n.curve[-1], budget) for p, n in pairs]
    out["reach"] = statistics.median(reached) / budget
    out["never"] = sum(p.curve[-1] > n.curve[-1] for p, n in pairs)
    out["trials"] = statistics.median(p.trials for p, _ in pairs)
    out["epochs"] = statistics.median(p.epochs for p, _ in pairs)
    return out


def fmt(q: tuple[float, float, float]) -> str:
    median, q1, q3 = q
    return f"{median:.3f}x [{q1:.3f}, {q3:.3f}]"


def load(paths: list[Path]) -> tuple[dict[tuple[str, str, int], Arm], int, list[str]]:
    """The arms of runs saved with --save, their budget, and their pruners in the order the runs
    named them (the arms themselves are saved in the order they finished)."""
    arms: dict[tuple[str, str, int], Arm] = {}
    budgets, pruners = set(), []
    for path in paths:
        saved = json.loads(path.read_text())
        budgets.add(saved["budget"])
        for a in saved["arms"]:
            arm = Arm(**a)
            arms[arm.workload, arm.pruner, arm.seed] = arm
        pruners += saved.get("pruners") or [a["pruner"] for a in saved["arms"] if a["pruner"] != "none"]
    if len(budgets) != 1:
        raise SystemExit(f"--load: the files have different budgets ({sorted(budgets)})")
    return arms, budgets.pop(), list(dict.fromkeys(pruners))


def report(arms: dict[tuple[str, str, int], Arm], workloads: list[str], pruners: list[str], seeds: list[int], budget: int, plot_to: Path | None) -> None:
    """The table per workload, the plot, and the SUMMARY line. A pruner not run on a workload
    (--load of separate runs) is n/a there."""
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for w in workloads:
        own = statistics.median(reach(arms[w, "none", s].curve, arms[w, "none", s].curve[-1], budget) for s in seeds)
        print(f"\n{w}: none reaches its own final best at {own / budget:.2f}x the budget (median)")
        print(f"  {'pruner':<28}  {'loss@1/4':>24}  {'loss@1/2':>24}  {'loss@1':>24}  {'>= none':>7}  {'reach':>5}  {'never':>5}  {'trials':>6}")
        for label in pruners:
            if not all((w, label, s) in arms for s in seeds):
                continue
            r = results[w, label] = compare(arms, w, label, seeds, budget)
            print(
                f"  {label:<28}  {fmt(r[0.25]):>24}  {fmt(r[0.5]):>24}  {fmt(r[1.0]):>24}  {r['share']:>7.0%}  "
                f"{r['reach']:>4.2f}x  {r['never']:>5}  {r['trials']:>6g}"
            )
        none_trials = statistics.median(arms[w, "none", s].trials for s in seeds)
        print(f"  {'none':<28}  {'':>24}  {'':>24}  {'':>24}  {'':>7}  {'':>5}  {'':>5}  {none_trials:>6g}")
    if plot_to:
        from bench.pruning_plot import plot

        plot(arms, workloads, [*pruners, "none"], seeds, budget, plot_to)
        print(f"plot: {plot_to}")
    parts = []
    for label in pruners:
        cells, goal = [], 0
        for w in workloads:
            r = results.get((w, label))
            if r is None:
                cells.append(f"{w} n/a")
                continue
            cells.append(f"{w} {r[1.0][0]:.2f}x {r['share']:.0%} {r['reach']:.2f}x")
            goal += r["share"] >= 0.75 and r["reach"] <= 0.5
        parts.append(f"{label} [{' | '.join(cells)}] goal met on {goal}/{len(workloads)}")
    n = len(seeds)
    print(
        f"SUMMARY pruning: {'; '.join(parts)} (loss@1 median over none, share of seeds >= none, reach median; "
        f"{n} seed{'s' if n != 1 else ''}, budget {budget} epochs)",
        flush=True,
    )
