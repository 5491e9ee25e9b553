"""What a trial's loss curve says, and what a study's curves say together.

The table at the end of ../shared/HYPERPARAMETERS.md ("What a loss curve says"):
NaN, inf or rising sharply: diverged; up and down with no trend: oscillating (LR too high);
nearly flat from the start: too slow (LR too low); falls, then flattens: healthy."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

DIAGNOSES = ("diverged", "oscillating", "too_slow", "healthy")

# "Barely moved": under 1% better than where it started.
TOO_SLOW_IMPROVEMENT = 0.01
# A step counts as a real move when it is over 2% of the starting loss; smaller wiggles are noise.
SIGNIFICANT_STEP = 0.02
# "Rising sharply": ending 50% above the start without ever improving on it.
RISING = 0.5


def diagnose(values: Sequence[float], *, reason: str | None = None, start: float | None = None) -> str | None:
    """The diagnosis of one curve of losses (lower is better), in step order.

    `start` is the loss before any training, when the trainer measured it: "flat from the start"
    is judged against it. None when there is nothing to judge (no values, no divergence)."""
    if reason == "diverged" or any(not math.isfinite(v) for v in values):
        return "diverged"
    curve = ([start] if start is not None and math.isfinite(start) else []) + list(values)
    if len(curve) < 2:
        return None
    first, last, best = curve[0], curve[-1], min(curve)
    scale = max(abs(first), 1e-12)
    if best >= first and (last - first) / scale > RISING:
        return "diverged"
    diffs = [b - a for a, b in zip(curve, curve[1:])]
    moves = [d for d in diffs if abs(d) > SIGNIFICANT_STEP * scale]
    flips = sum(1 for a, b in zip(moves, moves[1:]) if (a > 0) != (b > 0))
    ups = sum(1 for d in moves if d > 0)
    travelled = sum(abs(d) for d in diffs)
    # Up and down with no trend: it moved a lot but got nowhere in particular.
    if flips >= 2 and ups >= 2 and abs(last - first) < 0.5 * travelled:
        return "oscillating"
    if (first - best) / scale < TOO_SLOW_IMPROVEMENT:
        return "too_slow"
    return "healthy"


@dataclass(frozen=True)
class Diagnosed:
    diagnosis: str
    params: dict[str, Any]


def hints(trials: Iterable[Diagnosed], *, fixed_lr: float | None = None) -> list[str]:
    """Plain advice from the diagnoses, tied to the learning rate where the trials searched it."""
    trials = list(trials)
    out: list[str] = []
    with_lr = [t for t in trials if isinstance(t.params.get("lr"), (int, float))]
    for diagnosis, advice in (
        ("diverged", "consider lowering lr's upper bound below {t:.3g}, or clipping gradients (grad_clip)"),
        ("oscillating", "the lr is too high there; consider lowering lr's upper bound below {t:.3g}"),
    ):
        split = _best_split(with_lr, diagnosis, above=True)
        if split:
            t, bad, n = split
            out.append(f"{bad} of {n} trials with lr >= {t:.3g} {_verb(diagnosis)}; " + advice.format(t=t))
    split = _best_split(with_lr, "too_slow", above=False)
    if split:
        t, bad, n = split
        out.append(
            f"{bad} of {n} trials with lr <= {t:.3g} were too slow (the loss barely moved); "
            f"consider raising lr's lower bound above {t:.3g}"
        )
    if not with_lr:
        counts = Counter(t.diagnosis for t in trials)
        where = f"the fixed lr {fixed_lr:g}" if fixed_lr is not None else "the lr"
        if counts["diverged"] or counts["oscillating"]:
            n = counts["diverged"] + counts["oscillating"]
            out.append(f"{n} of {len(trials)} trials diverged or oscillated: {where} is probably too high; lower it")
        if counts["too_slow"]:
            out.append(f"{counts['too_slow']} of {len(trials)} trials were too slow: {where} is probably too low; raise it")
    return out


def _best_split(trials: list[Diagnosed], diagnosis: str, *, above: bool) -> tuple[float, int, int] | None:
    """The lr threshold that best separates `diagnosis` from the rest: (threshold, hits, trials
    beyond it). A lone divergence at a low lr doesn't drag the threshold down past many healthy runs."""
    candidates = sorted({t.params["lr"] for t in trials if t.diagnosis == diagnosis})
    best: tuple[int, float, int, int] | None = None
    for threshold in candidates if above else reversed(candidates):
        group = [t for t in trials if (t.params["lr"] >= threshold if above else t.params["lr"] <= threshold)]
        hits = sum(1 for t in group if t.diagnosis == diagnosis)
        score = hits - (len(group) - hits)
        if best is None or score > best[0]:  # ties keep the wider group, seen first
            best = (score, threshold, hits, len(group))
    return None if best is None else best[1:]


def _verb(diagnosis: str) -> str:
    return {"diverged": "diverged", "oscillating": "oscillated"}[diagnosis]


def counts(diagnoses: Iterable[str | None]) -> dict[str, int]:
    c = Counter(d for d in diagnoses if d)
    return {d: c.get(d, 0) for d in DIAGNOSES}
