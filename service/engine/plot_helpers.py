"""What the plot modules share: NothingToPlot, which trials count, and labels and axes drawn
the same way in every plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from service.errors import Conflict


class NothingToPlot(Conflict):
    """The study has no data for this plot yet (409): not an error in the request."""

    code = "nothing_to_plot"


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
