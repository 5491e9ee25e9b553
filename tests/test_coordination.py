"""The flat coordination path (service/engine/coordination.py) against plain Optuna: the same
trials, reported in the same interleaved order, get the same pruning decision at every step,
and the incremental trial view counts what a full read counts."""

from __future__ import annotations

import random
import uuid

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from service.engine import coordination
from service.engine.storage import make_storage
from service.settings import Settings


@pytest.fixture(scope="module")
def storage(db_url: str, settings: Settings) -> optuna.storages.BaseStorage:
    return make_storage(db_url, settings)


def replay(storage: optuna.storages.BaseStorage, direction: str, pruner_args: dict[str, int], seed: int) -> tuple[list[bool], list[bool]]:
    """Runs one random schedule of trials (several running at once, finishing out of order,
    some complete, some pruned, some failed) through plain Optuna and through the flat path."""
    rng = random.Random(seed)
    raw = optuna.create_study(direction=direction, pruner=optuna.pruners.MedianPruner(**pruner_args))
    flat = optuna.create_study(storage=storage, study_name=f"parity-{uuid.uuid4().hex[:8]}", direction=direction)
    pruner = optuna.pruners.MedianPruner(**pruner_args)
    sense = StudyDirection.MAXIMIZE if direction == "maximize" else StudyDirection.MINIMIZE
    raw_answers: list[bool] = []
    flat_answers: list[bool] = []
    running: list[tuple[optuna.Trial, optuna.Trial, float, int]] = []
    started = 0
    while started < 40 or running:
        if started < 40 and (len(running) < 4 and rng.random() < 0.6 or not running):
            running.append((raw.ask(), flat.ask(), rng.uniform(0.5, 3.0), 0))
            started += 1
            continue
        i = rng.randrange(len(running))
        r, f, level, step = running[i]
        step += 1
        value = level / step + rng.gauss(0, 0.05)
        r.report(value, step)
        raw_prune = r.should_prune()
        storage.set_trial_intermediate_value(f._trial_id, step, value)
        flat_prune = coordination.should_prune(
            storage, flat._study_id, pruner, sense, f._trial_id, coordination.curve(storage, f._trial_id)
        )
        raw_answers.append(raw_prune)
        flat_answers.append(flat_prune)
        end = raw_prune or step >= 8 or rng.random() < 0.05
        if end:
            state = TrialState.PRUNED if raw_prune else (TrialState.FAIL if rng.random() < 0.1 else TrialState.COMPLETE)
            result = None if state != TrialState.COMPLETE else value
            raw.tell(r, result, state=state)
            flat.tell(f, result, state=state)
            running.pop(i)
        else:
            running[i] = (r, f, level, step)
    return raw_answers, flat_answers


@pytest.mark.parametrize(
    ("direction", "pruner_args", "seed"),
    [
        ("minimize", {"n_startup_trials": 5, "n_warmup_steps": 2}, 0),
        ("minimize", {"n_startup_trials": 2, "n_warmup_steps": 0, "interval_steps": 2, "n_min_trials": 3}, 1),
        ("maximize", {"n_startup_trials": 3, "n_warmup_steps": 1}, 2),
    ],
)
def test_pruning_decisions_match_optunas_median_pruner(
    storage: optuna.storages.BaseStorage, direction: str, pruner_args: dict[str, int], seed: int
) -> None:
    raw_answers, flat_answers = replay(storage, direction, pruner_args, seed)
    assert len(raw_answers) > 100
    assert 0 < sum(raw_answers) < len(raw_answers)  # both answers occur: the comparison means something
    assert flat_answers == raw_answers


def test_incremental_view_counts_what_a_full_read_counts(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(storage=storage, study_name=f"view-{uuid.uuid4().hex[:8]}")
    first = [study.ask() for _ in range(3)]
    view = coordination.study_trials(storage, study._study_id)
    assert (view.originals, len(view.completed), view.waiting) == (3, 0, 0)
    # The oldest finishes last; an enqueued trial waits; one fails and is not counted as complete.
    first[1].report(1.0, 1)
    study.tell(first[1], 1.0)
    study.tell(first[2], state=TrialState.FAIL)
    study.enqueue_trial({"x": 1.0})
    view = coordination.study_trials(storage, study._study_id)
    assert (view.originals, len(view.completed), view.waiting) == (4, 1, 1)
    assert view.completed[0].intermediate_values == {1: 1.0}
    study.tell(first[0], 2.0)
    view = coordination.study_trials(storage, study._study_id)
    full = storage.get_all_trials(study._study_id, deepcopy=False)
    assert view.originals == len(full)
    assert len(view.completed) == sum(t.state == TrialState.COMPLETE for t in full) == 2


def test_small_reads_agree_with_optunas_public_api(storage: optuna.storages.BaseStorage) -> None:
    """The direct reads of Optuna's tables (curves, states, retries) against FrozenTrials."""
    study = optuna.create_study(storage=storage, study_name=f"reads-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    for step, value in ((1, 2.5), (2, float("inf")), (3, float("-inf")), (5, 0.125)):
        trial.report(value, step)
    assert coordination.curve(storage, trial._trial_id) == storage.get_trial(trial._trial_id).intermediate_values
    study.tell(trial, 0.125)
    view = coordination.study_trials(storage, study._study_id)
    assert view.completed[-1].intermediate_values == {1: 2.5, 2: float("inf"), 3: float("-inf"), 5: 0.125}
    # A retry (Optuna's RetryHeartbeatStaleTrialCallback marks it with retry_history) is not an original.
    lost = study.ask()
    optuna.storages.RetryFailedTrialCallback()(study, storage.get_trial(lost._trial_id))
    view = coordination.study_trials(storage, study._study_id)
    assert view.originals == 2 and view.waiting == 1
