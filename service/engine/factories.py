"""Samplers and pruners built from a stored study spec. Optuna does not store them, so every
API process rebuilds them here, from the same spec, in one place."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

from service.spec import (
    CategoricalParam,
    ConditionalParam,
    FloatParam,
    IntParam,
    NoPruner,
    PercentilePruner,
    StudySpec,
    active_order,
    defaults_for,
)
from service.spec.space import PlainParam


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample the space define-by-run, parents first, so a conditional parameter gets the range
    of its parent's value, or is left out of the trial (and out of optuna-dashboard) when the
    parent's value has no case."""
    fixed = {**defaults_for(spec.workload.model), **spec.workload.fixed}
    values: dict[str, Any] = {}
    space = spec.search_space()
    for name in active_order(space):
        param = space[name]
        if isinstance(param, ConditionalParam):
            parent = values[param.on] if param.on in values else fixed.get(param.on)
            case = param.case_for(parent)
            if case is None:
                continue
            param = case
        values[name] = _suggest_one(trial, name, param)
    return values


def _suggest_one(trial: optuna.Trial, name: str, p: PlainParam) -> Any:
    if isinstance(p, FloatParam):
        return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    if isinstance(p, IntParam):
        return trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
    return trial.suggest_categorical(name, p.choices)


def _grid(spec: StudySpec) -> dict[str, list[Any]]:
    if spec.kind == "lr_sweep" and spec.sweep is not None:
        sweep: dict[str, list[Any]] = {"lr": spec.sweep.grid()}
        if spec.sweep.seeds > 1:
            sweep["seed"] = list(range(spec.sweep.seeds))
        return sweep
    grid: dict[str, list[Any]] = {}
    for name, p in spec.space.items():
        if isinstance(p, CategoricalParam):
            grid[name] = list(p.choices)
        elif isinstance(p, IntParam):
            grid[name] = list(range(p.low, p.high + 1, p.step))
        else:
            assert p.step is not None  # the spec refuses a grid over a continuous float
            grid[name] = [float(v) for v in np.arange(p.low, p.high + p.step / 2, p.step)]
    return grid


class _BudgetedGridSampler(optuna.samplers.GridSampler):
    """A grid sampler that leaves ending the study to the budget.

    GridSampler calls study.stop() once the grid is used up, which only works inside
    study.optimize(); here it would turn the finish of the last grid point into an error."""

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        pass


def build_sampler(spec: StudySpec, n_claimed: int) -> optuna.samplers.BaseSampler:
    """A fresh sampler per claim, so any API process can serve any claim.

    A seeded sampler rebuilt for every claim would repeat its first draw forever, so the seed
    advances with the number of trials already claimed: reproducible, but not repetitive.
    QMC is the exception: its sequence is keyed by the seed and must keep it."""
    s = spec.sampler
    seed = None if s.seed is None else s.seed + n_claimed
    if s.kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if s.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.kind == "grid":
        # Like QMC, the grid's order is keyed by the seed: a seed that moved per claim would
        # reshuffle it and hand out the same point twice.
        return _BudgetedGridSampler(_grid(spec), seed=s.seed if s.seed is not None else 0)
    if s.kind == "qmc":
        return optuna.samplers.QMCSampler(seed=s.seed if s.seed is not None else 0, warn_independent_sampling=False)
    if s.kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {s.kind}")


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if isinstance(p, NoPruner):
        return optuna.pruners.NopPruner()
    when = dict(
        n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps, interval_steps=p.interval_steps, n_min_trials=p.n_min_trials
    )
    if isinstance(p, PercentilePruner):
        return optuna.pruners.PercentilePruner(p.percentile, **when)
    return optuna.pruners.MedianPruner(**when)


def load_study(
    storage: optuna.storages.BaseStorage, optuna_name: str, spec: StudySpec, n_claimed: int = 0
) -> optuna.Study:
    return optuna.load_study(
        study_name=optuna_name, storage=storage, sampler=build_sampler(spec, n_claimed), pruner=build_pruner(spec)
    )
