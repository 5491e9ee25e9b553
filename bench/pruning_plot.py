"""The anytime curves of bench/pruning.py as one PNG: a panel per workload, per arm the median
over seeds of the best loss after each epoch consumed, with the band between the quartiles."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


# Long study-definition labels, shortened for the legend.
_SHORT = (("successive_halving", "halving"), ("min_resource=", "min "), ("max_resource=", "max "), ("reduction_factor=", "rf "), ("percentile:", "p"))


def short(label: str) -> str:
    for long, brief in _SHORT:
        label = label.replace(long, brief)
    return label


def plot(arms: dict[tuple[str, str, int], Any], workloads: list[str], labels: list[str], seeds: list[int], budget: int, path: Path) -> None:
    fig, axes = plt.subplots(1, len(workloads), figsize=(max(6.5, 5.0 * len(workloads)), 4.8), squeeze=False)
    x = np.arange(1, budget + 1)
    for ax, workload in zip(axes[0], workloads):
        for label in labels:
            if not all((workload, label, s) in arms for s in seeds):
                continue  # not run on this workload (--load of separate runs)
            curves = np.array([arms[workload, label, s].curve for s in seeds], dtype=float)
            # Before a seed's first complete trial its best is inf: that epoch's quantiles are
            # drawn only once every seed has one, so the band never mixes in a missing value.
            curves[~np.isfinite(curves)] = np.nan
            defined = ~np.isnan(curves).any(axis=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs, masked just below
                q1, median, q3 = (np.where(defined, np.nanquantile(curves, q, axis=0), np.nan) for q in (0.25, 0.5, 0.75))
            # One colour per arm in every panel, whichever arms a panel has.
            style = {"color": "0.3", "linestyle": "--"} if label == "none" else {"color": f"C{labels.index(label) % 10}"}
            (line,) = ax.plot(x, median, label=short(label), linewidth=1.6, drawstyle="steps-post", **style)
            ax.fill_between(x, q1, q3, color=line.get_color(), alpha=0.18, linewidth=0, step="post")
        ax.set_title(f"{workload} ({len(seeds)} seeds)")
        ax.set_xlabel("epochs consumed")
        ax.set_yscale("log")
        ax.set_xlim(1, budget)
        ax.grid(True, which="both", alpha=0.3)
        # From an eighth of the budget on: the first trials' losses would squash the rest.
        later = [v for (w, _, s), arm in arms.items() if w == workload and s in seeds for v in arm.curve[budget // 8 :] if math.isfinite(v)]
        if later:
            ordered = sorted(later)
            ax.set_ylim(ordered[int(0.01 * (len(ordered) - 1))] * 0.95, ordered[int(0.9 * (len(ordered) - 1))] * 1.1)
    axes[0][0].set_ylabel("best validation loss so far (complete trials)")
    seen: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(name, handle)
    handles, names = list(seen.values()), list(seen)
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 3 * len(workloads)), fontsize=8, frameon=False)
    fig.suptitle(f"Best loss by epochs used, {budget} per arm (median and quartiles over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.12 if len(workloads) == 1 else 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
