"""Samplers and pruners built from a stored study spec. Optuna does not store them, so every
API process rebuilds them here, from the same spec, in one place."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import numpy as np
import optuna

from service.engine.optuna_adapter.grid import BudgetedGridSampler
from service.engine.optuna_adapter.internals import keep_search_spaces
from service.errors import InvalidRequest
from service.spec import CategoricalParam, ConditionalParam, FloatParam, IntParam, StudySpec, active_order, defaults_for
from service.spec.pruners import (
    HyperbandPruner,
    NoPruner,
    PatientPruner,
    PercentilePruner,
    Pruner,
    SuccessiveHalvingPruner,
    ThresholdPruner,
    Wrappable,
)
from service.spec.samplers import GpSampler, Nsga2Sampler, Nsga3Sampler, TpeSampler
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


def distributions_for(spec: StudySpec, params: dict[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The distribution each of these params (checked by spec.check_params) is drawn from: what
    suggest() would have given a trial with them."""
    fixed = {**defaults_for(spec.workload.model), **spec.workload.fixed}
    space = spec.search_space()
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name in params:
        param = space[name]
        if isinstance(param, ConditionalParam):
            case = param.case_for(params.get(param.on, fixed.get(param.on)))
            assert case is not None
            param = case
        out[name] = _distribution(param)
    return out


def _distribution(p: PlainParam) -> optuna.distributions.BaseDistribution:
    if isinstance(p, FloatParam):
        return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, IntParam):
        return optuna.distributions.IntDistribution(p.low, p.high, log=p.log, step=p.step)
    return optuna.distributions.CategoricalDistribution(p.choices)


def _suggest_one(trial: optuna.Trial, name: str, p: PlainParam) -> Any:
    if isinstance(p, FloatParam):
        return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    if isinstance(p, IntParam):
        return trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
    return trial.suggest_categorical(name, p.choices)


def _grid(spec: StudySpec) -> dict[str, list[Any]]:
    """Each axis's values (at most MAX_CHOICES each, and MAX_GRID_POINTS in all: the spec checks)."""
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


def check_buildable(spec: StudySpec) -> None:
    """What the definition cannot say about this process: a GP sampler fits with torch, which the
    API image leaves out unless it is built with the `gp` extra (README, Samplers)."""
    if spec.sampler.kind == "gp" and importlib.util.find_spec("torch") is None:
        raise InvalidRequest(
            "sampler.kind: gp fits its Gaussian process with torch, and this API process has no torch; "
            "install hpo-service[gp] where the API runs (the api image: --build-arg API_EXTRAS=gp), or use tpe"
        )


def build_sampler(spec: StudySpec, n_claimed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        # Optuna marks NSGA-III, TPE's group and some crossovers experimental: said once, in the README.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(spec, n_claimed)


def _sampler(spec: StudySpec, n_claimed: int) -> optuna.samplers.BaseSampler:
    """A fresh sampler per claim, so any API process can serve any claim.

    A seeded sampler rebuilt for every claim would repeat its first draw forever, so the seed
    advances with the number of trials already claimed: reproducible, but not repetitive.
    QMC and grid are the exceptions: their sequence is keyed by the seed and must keep it.
    Every other sampler keeps what it learns in the trials themselves (TPE, GP and brute force
    read them at each claim; CMA-ES and NSGA-II/III keep their generation in the trials' system
    attributes), so rebuilding loses nothing."""
    s = spec.sampler
    seed = None if s.seed is None else s.seed + n_claimed
    if isinstance(s, TpeSampler):
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=s.n_startup_trials,
            n_ei_candidates=s.n_ei_candidates,
            multivariate=s.multivariate,
            group=s.group,
            constant_liar=s.constant_liar,
        )
    if s.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.kind == "grid":
        # Like QMC, the grid's order is keyed by the seed: a seed that moved per claim would
        # reshuffle it and hand out the same point twice.
        return BudgetedGridSampler(_grid(spec), seed=s.seed if s.seed is not None else 0)
    if s.kind == "qmc":
        return optuna.samplers.QMCSampler(seed=s.seed if s.seed is not None else 0, warn_independent_sampling=False)
    if s.kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if isinstance(s, GpSampler):
        return optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=s.n_startup_trials, deterministic_objective=s.deterministic_objective
        )
    if isinstance(s, (Nsga2Sampler, Nsga3Sampler)):
        genetic: dict[str, Any] = dict(
            population_size=s.population_size,
            mutation_prob=s.mutation_prob,
            crossover=_crossover(s.crossover),
            crossover_prob=s.crossover_prob,
            swapping_prob=s.swapping_prob,
            seed=seed,
        )
        if isinstance(s, Nsga3Sampler):
            return optuna.samplers.NSGAIIISampler(dividing_parameter=s.dividing_parameter, **genetic)
        return optuna.samplers.NSGAIISampler(**genetic)
    if s.kind == "bruteforce":
        return optuna.samplers.BruteForceSampler(seed=seed)
    raise ValueError(f"unknown sampler {s.kind}")


def _crossover(name: str) -> optuna.samplers.nsgaii.BaseCrossover:
    crossovers = optuna.samplers.nsgaii
    return {
        "uniform": crossovers.UniformCrossover,
        "blxalpha": crossovers.BLXAlphaCrossover,
        "sbx": crossovers.SBXCrossover,
        "vsbx": crossovers.VSBXCrossover,
        "undx": crossovers.UNDXCrossover,
        "spx": crossovers.SPXCrossover,
    }[name]()


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # PatientPruner
        return _pruner(spec.pruner)


def _pruner(p: Pruner | Wrappable) -> optuna.pruners.BasePruner:
    if isinstance(p, NoPruner):
        return optuna.pruners.NopPruner()
    if isinstance(p, SuccessiveHalvingPruner):
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource,
            reduction_factor=p.reduction_factor,
            min_early_stopping_rate=p.min_early_stopping_rate,
            bootstrap_count=p.bootstrap_count,
        )
    if isinstance(p, HyperbandPruner):
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, max_resource=p.max_resource, reduction_factor=p.reduction_factor, bootstrap_count=p.bootstrap_count
        )
    if isinstance(p, ThresholdPruner):
        return optuna.pruners.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps, interval_steps=p.interval_steps)
    if isinstance(p, PatientPruner):
        wrapped = None if p.wrapped is None else _pruner(p.wrapped)
        return optuna.pruners.PatientPruner(wrapped, patience=p.patience, min_delta=p.min_delta)
    when = dict(
        n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps, interval_steps=p.interval_steps, n_min_trials=p.n_min_trials
    )
    if isinstance(p, PercentilePruner):
        return optuna.pruners.PercentilePruner(p.percentile, **when)
    return optuna.pruners.MedianPruner(**when)


def load_study(
    storage: optuna.storages.BaseStorage,
    optuna_name: str,
    spec: StudySpec,
    n_claimed: int = 0,
    search_spaces: dict[str, Any] | None = None,
    pinned: dict[str, Any] | None = None,
) -> optuna.Study:
    """`search_spaces`: the study's kept search spaces (keep_search_spaces), for a claim.
    `pinned`: params every trial asked from this study takes as given, the rest sampled as
    usual (Optuna's PartialFixedSampler): a fused group's shape (engine/group_claims.py)."""
    sampler = build_sampler(spec, n_claimed)
    if search_spaces is not None:
        keep_search_spaces(sampler, search_spaces)
    if pinned:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.PartialFixedSampler(pinned, sampler)
    return optuna.load_study(study_name=optuna_name, storage=storage, sampler=sampler, pruner=build_pruner(spec))
