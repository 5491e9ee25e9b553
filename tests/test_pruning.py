"""The pruning rule the service judges itself (service/engine/pruning.py), built from the study
definition's pruner, against Optuna's PercentilePruner on replayed curves; tests/test_coordination.py
replays whole studies through the database against Optuna's MedianPruner."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from service.engine import coordination
from service.engine.pruning import CurveSummary, NeverPrune, PercentileRule, flat_rule
from service.spec.pruners import HyperbandPruner, NoPruner, PercentilePruner, ThresholdPruner


def test_the_rule_is_built_from_the_definitions_pruner() -> None:
    assert isinstance(flat_rule(NoPruner(kind="none"), "minimize"), NeverPrune)
    rule = flat_rule(PercentilePruner(kind="percentile", percentile=25, n_warmup_steps=2), "maximize")
    assert rule == PercentileRule(25.0, 5, 2, 1, 1, maximize=True)
    # Optuna's own pruners judge the other kinds.
    assert flat_rule(HyperbandPruner(kind="hyperband"), "minimize") is None
    assert flat_rule(ThresholdPruner(kind="threshold", upper=1.0), "minimize") is None


@pytest.mark.parametrize("seed", range(4))
def test_percentile_decisions_match_optuna_on_awkward_curves(seed: int) -> None:
    """The per-step arrays (StudyTrials.at_step) against Optuna's PercentilePruner.prune walking
    every completed trial: NaN and infinite values, curves with gaps, steps nobody reached,
    both directions, and the pruner's warm-up, interval, minimum-trials and percentile settings."""
    rng = random.Random(seed)
    awkward = [float("nan"), float("inf"), float("-inf")]
    for _ in range(30):
        direction = rng.choice([StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE])
        settings = dict(
            percentile=rng.choice([10.0, 25.0, 50.0, 90.0]),
            n_startup_trials=rng.randrange(0, 4),
            n_warmup_steps=rng.randrange(0, 3),
            interval_steps=rng.randrange(1, 3),
            n_min_trials=rng.randrange(1, 4),
        )
        pruner = optuna.pruners.PercentilePruner(**settings)  # type: ignore[arg-type]
        rule = flat_rule(PercentilePruner(kind="percentile", **settings), "maximize" if direction == StudyDirection.MAXIMIZE else "minimize")
        assert isinstance(rule, PercentileRule)

        def curve() -> dict[int, float]:
            steps = sorted(rng.sample(range(1, 9), rng.randrange(1, 7)))
            return {s: rng.choice(awkward) if rng.random() < 0.1 else rng.uniform(0, 3) for s in steps}

        study = optuna.create_study(direction=direction)
        view = coordination.StudyTrials(study_id=0)
        for trial_id in range(rng.randrange(0, 12)):
            values = curve()
            study.add_trial(
                optuna.trial.create_trial(value=1.0, intermediate_values=values)
            )
            view._note(trial_id, TrialState.COMPLETE, False, values)
        for _ in range(10):
            reported = curve()
            frozen = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values=reported)
            step = max(reported)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # nanpercentile of all-NaN, as in Optuna
                expected = pruner.prune(study, frozen)
                got = rule.prune(CurveSummary.of(reported), view.at_step(step))
            assert got == expected, (settings, direction, reported, [t.intermediate_values for t in study.trials])


@pytest.mark.parametrize("seed", range(4))
def test_a_curve_summary_grown_one_step_at_a_time_is_the_summary_of_the_whole_curve(seed: int) -> None:
    """The batch path adds each report's step to the summary it read (CurveSummary.with_value);
    steps arrive in any order, and NaN and infinite values count as np.nanmin/np.nanmax count them."""
    rng = random.Random(seed)
    for _ in range(50):
        steps = rng.sample(range(0, 12), rng.randrange(1, 9))
        values = [rng.choice([math.nan, math.inf, -math.inf]) if rng.random() < 0.2 else rng.uniform(-1, 3) for _ in steps]
        summary = CurveSummary.of({})
        seen: dict[int, float] = {}
        for step, value in zip(steps, values):
            summary = summary.with_value(step, value)
            seen[step] = value
            whole = CurveSummary.of(seen)
            assert (summary.last_step, summary.previous_step) == (whole.last_step, whole.previous_step) == (
                max(seen), max((s for s in seen if s != max(seen)), default=-1))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN
                expected = (float(np.nanmin(list(seen.values()))), float(np.nanmax(list(seen.values()))))
            for got in ((summary.best_min, summary.best_max), (whole.best_min, whole.best_max)):
                assert all(g == e or (math.isnan(g) and math.isnan(e)) for g, e in zip(got, expected)), (seen, got)
