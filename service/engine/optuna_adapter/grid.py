"""Optuna's GridSampler on an indexed grid: its own checks and seeded order, set up through its
private attributes (which is why it lives in the adapter)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna


class _ShuffledProduct(Sequence[tuple[Any, ...]]):
    """Optuna's GridSampler keeps `list(itertools.product(*axes))`, shuffled by its seed, and
    builds it on every claim here (a sampler per claim): the review's grid of 10^9 points
    OOM-killed the API. This is the same sequence, point for point, without the points: a
    shuffled order of their indices (8 bytes a point), each point decoded when it is asked for.
    numpy's shuffle draws the same numbers for an index array as for a list of that length."""

    def __init__(self, axes: list[list[Any]], rng: np.random.RandomState) -> None:
        self._axes = axes
        self._order = np.arange(math.prod(len(a) for a in axes), dtype=np.int64)
        rng.shuffle(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        index = int(self._order[i])
        point = []
        # itertools.product's order: the last axis changes fastest.
        for values in reversed(self._axes):
            index, at = divmod(index, len(values))
            point.append(values[at])
        return tuple(reversed(point))


class BudgetedGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler on an indexed grid, leaving the end of the study to the budget.

    GridSampler calls study.stop() once the grid is used up, which only works inside
    study.optimize(); here it would turn the finish of the last grid point into an error."""

    def __init__(self, search_space: dict[str, list[Any]], seed: int) -> None:
        # Optuna's own set-up on an empty grid (one point, whose shuffle draws nothing): its
        # checks and its seeded random state, which then shuffles the real grid's order.
        super().__init__({}, seed=seed)
        for name, values in search_space.items():
            for value in values:
                self._check_value(name, value)
        self._search_space = {name: list(values) for name, values in sorted(search_space.items())}
        self._param_names = sorted(search_space)
        self._all_grids = _ShuffledProduct(list(self._search_space.values()), self._rng.rng)  # type: ignore[assignment]
        self._n_min_trials = len(self._all_grids)

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        pass
