"""A random schedule of trials for replaying pruning decisions: several trials running at once,
reporting in an interleaved order and finishing out of order, some complete, some pruned, some
failed. The same seed gives the same schedule, so two implementations can be fed the same curves."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Running:
    handle: Any
    level: float
    step: int = 0


def run_schedule(
    seed: int,
    n_trials: int,
    start: Callable[[], Any],
    report: Callable[[Any, int, float], bool],
    end: Callable[[Any, str, float], None],
    max_steps: int = 8,
) -> None:
    """start() begins a trial and returns its handle; report(handle, step, value) answers whether
    to prune; end(handle, state, last value) finishes it as "complete", "pruned" or "failed"."""
    rng = random.Random(seed)
    running: list[_Running] = []
    started = 0
    while started < n_trials or running:
        if started < n_trials and (len(running) < 4 and rng.random() < 0.6 or not running):
            running.append(_Running(start(), rng.uniform(0.5, 3.0)))
            started += 1
            continue
        i = rng.randrange(len(running))
        trial = running[i]
        trial.step += 1
        value = trial.level / trial.step + rng.gauss(0, 0.05)
        pruned = report(trial.handle, trial.step, value)
        if pruned or trial.step >= max_steps or rng.random() < 0.05:
            state = "pruned" if pruned else ("failed" if rng.random() < 0.1 else "complete")
            end(trial.handle, state, value)
            running.pop(i)
