"""The indexed grid (service/engine/factories.py) is Optuna's GridSampler point for point: the
same shuffled order and the same random state after it, without building the grid."""

from __future__ import annotations

import optuna
import pytest

from service.engine.optuna_adapter.grid import BudgetedGridSampler


@pytest.mark.parametrize("seed", [0, 3, 12345])
def test_the_indexed_grid_is_optunas_grid(seed: int) -> None:
    space = {"b": [1, 2, 3], "a": ["x", "y", None], "c": [0.1, 0.2, 0.3, 0.4], "d": [True]}
    ours = BudgetedGridSampler(space, seed)
    theirs = optuna.samplers.GridSampler(space, seed=seed)
    assert list(ours._all_grids) == theirs._all_grids
    assert ours._search_space == theirs._search_space and ours._n_min_trials == theirs._n_min_trials
    # What it picks once the grid is used up comes from the same random state.
    assert ours._rng.rng.randint(1 << 30) == theirs._rng.rng.randint(1 << 30)


def test_an_indexed_grid_study_visits_every_point_once() -> None:
    space = {"a": list(range(7)), "b": ["u", "v", "w"]}
    study = optuna.create_study(sampler=BudgetedGridSampler(space, seed=1))
    seen = []
    for _ in range(21):
        trial = study.ask()
        seen.append((trial.suggest_categorical("a", space["a"]), trial.suggest_categorical("b", space["b"])))
        study.tell(trial, 0.0)
    assert sorted(seen) == sorted((a, b) for a in space["a"] for b in space["b"])
