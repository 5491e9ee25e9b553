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


def plot(arms: dict[tuple[str, str, int], Any], workloads: list[str], labels: list[str], seeds: list[int], budget: int, path: Path) -> None:
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.2 * len(workloads), 4.2), squeeze=False)
    x = np.arange(1, budget + 1)
    for ax, workload in zip(axes[0], workloads):
        for label in labels:
            curves = np.array([arms[workload, label, s].curve for s in seeds], dtype=float)
            # Before a seed's first complete trial its best is inf: that epoch's quantiles are
            # drawn only once every seed has one, so the band never mixes in a missing value.
            curves[~np.isfinite(curves)] = np.nan
            defined = ~np.isnan(curves).any(axis=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs, masked just below
                q1, median, q3 = (np.where(defined, np.nanquantile(curves, q, axis=0), np.nan) for q in (0.25, 0.5, 0.75))
            style = {"color": "0.3", "linestyle": "--"} if label == "none" else {}
            (line,) = ax.plot(x, median, label=label, linewidth=1.6, drawstyle="steps-post", **style)
            ax.fill_between(x, q1, q3, color=line.get_color(), alpha=0.18, linewidth=0, step="post")
        ax.set_title(f"{workload} ({len(seeds)} seeds)")
        ax.set_xlabel("epochs consumed")
        ax.set_yscale("log")
        ax.set_xlim(1, budget)
        ax.grid(True, which="both", alpha=0.3)
        finite = [v for label in labels for s in seeds for v in arms[workload, label, s].curve if math.isfinite(v)]
        if finite:
            ax.set_ylim(min(finite) * 0.95, sorted(finite)[int(0.98 * (len(finite) - 1))] * 1.05)
    axes[0][0].set_ylabel("best validation loss so far (complete trials)")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"Pruning at equal compute: median and quartiles over seeds, budget {budget} epochs per arm")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
