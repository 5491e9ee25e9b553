"""Samplers and pruners built from a stored study spec. Optuna does not store them, so every
API process rebuilds them here, from the same spec, in one place."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from service.spec import CategoricalParam, FloatParam, IntParam, MedianPruner, StudySpec


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for name, p in spec.space.items():
        if isinstance(p, FloatParam):
            out[name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[name] = IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            out[name] = CategoricalDistribution(p.choices)
    return out


def _grid(spec: StudySpec) -> dict[str, list[Any]]:
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
        return optuna.samplers.GridSampler(_grid(spec), seed=seed)
    if s.kind == "qmc":
        return optuna.samplers.QMCSampler(seed=s.seed if s.seed is not None else 0, warn_independent_sampling=False)
    if s.kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {s.kind}")


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if isinstance(p, MedianPruner):
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials,
            n_warmup_steps=p.n_warmup_steps,
            interval_steps=p.interval_steps,
            n_min_trials=p.n_min_trials,
        )
    return optuna.pruners.NopPruner()


def load_study(
    storage: optuna.storages.BaseStorage, optuna_name: str, spec: StudySpec, n_claimed: int = 0
) -> optuna.Study:
    return optuna.load_study(
        study_name=optuna_name, storage=storage, sampler=build_sampler(spec, n_claimed), pruner=build_pruner(spec)
    )
