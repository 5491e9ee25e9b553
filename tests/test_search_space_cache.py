"""A claim's fresh sampler carries on its study's incremental search space
(optuna_adapter.internals.keep_search_spaces) instead of re-reading every trial: the same parameters as a sampler
that starts from scratch, for every sampler kind that infers its space from the trials."""

from __future__ import annotations

import random
import warnings
from typing import Any

import optuna
import pytest
from optuna.search_space import IntersectionSearchSpace

from service.cli.up import demo_definition
from service.engine.factories import build_sampler, suggest
from service.engine.optuna_adapter.internals import keep_search_spaces
from service.spec import StudySpec


def spec_for(sampler: dict[str, Any]) -> StudySpec:
    d = demo_definition("cache", 100, 3)
    d["space"]["momentum"] = {"type": "float", "low": 0.5, "high": 0.99}
    return StudySpec.model_validate({**d, "sampler": sampler})


def claim(study_name: str, storage: Any, spec: StudySpec, n: int, kept: dict[str, Any] | None) -> tuple[optuna.Trial, dict[str, Any]]:
    sampler = build_sampler(spec, n)
    if kept is not None:
        keep_search_spaces(sampler, kept)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    trial = study.ask()
    return trial, suggest(trial, spec)


@pytest.mark.parametrize(
    "sampler",
    [
        {"kind": "tpe", "seed": 3, "n_startup_trials": 4},
        {"kind": "tpe", "seed": 3, "n_startup_trials": 4, "group": True},
        {"kind": "nsga2", "seed": 3, "population_size": 4},
        {"kind": "cmaes", "seed": 3},
    ],
    ids=["tpe", "tpe-group", "nsga2", "cmaes"],
)
def test_kept_search_spaces_give_the_fresh_samplers_parameters(sampler: dict[str, Any]) -> None:
    warnings.simplefilter("ignore")
    spec = spec_for(sampler)
    storage = optuna.storages.InMemoryStorage()
    for name in ("fresh", "kept"):
        optuna.create_study(study_name=name, storage=storage)
    kept: dict[str, Any] = {}
    rng = random.Random(0)
    held: list[tuple[optuna.Trial, optuna.Trial]] = []
    for n in range(40):
        a, params_a = claim("fresh", storage, spec, n, None)
        b, params_b = claim("kept", storage, spec, n, kept)
        assert params_b == params_a, f"claim {n}"
        value = rng.random()
        if n % 7 == 3:
            held.append((a, b))  # left running a while: the kept space must come back to it
            continue
        for study_name, trial in (("fresh", a), ("kept", b)):
            optuna.load_study(study_name=study_name, storage=storage).tell(trial, value if n % 5 else None, state=None if n % 5 else optuna.trial.TrialState.PRUNED)
        if len(held) > 1:
            for study_name, trial in zip(("fresh", "kept"), held.pop(0)):
                optuna.load_study(study_name=study_name, storage=storage).tell(trial, value)
    assert kept, "the sampler keeps no incremental search space"
    # The one object is carried from claim to claim, not rebuilt.
    again = build_sampler(spec, 99)
    keep_search_spaces(again, kept)
    spaces = [v for v in vars(again).values() if isinstance(v, IntersectionSearchSpace)]
    assert spaces and all(any(s is k for k in kept.values()) for s in spaces)


def test_a_sampler_without_a_search_space_keeps_nothing() -> None:
    kept: dict[str, Any] = {}
    keep_search_spaces(build_sampler(spec_for({"kind": "random", "seed": 0}), 0), kept)
    assert kept == {}
