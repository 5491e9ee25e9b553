"""Pruners the service does not judge on its flat path (pruning.flat_rule): successive
halving, Hyperband, threshold and patience, run as Optuna wrote them on the study as the storage
has it. They read more than the completed trials' values at one step (rungs in system attributes,
brackets by trial number, the trial's own history), so a copy of their rules would be a fork.

The report goes in through the storage, committed, before the pruner reads: what trial.report
then trial.should_prune do in a notebook. tests/test_samplers_pruners.py replays the same curves
through the API and through a plain Optuna study."""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from service.engine.optuna_adapter.internals import auto_resource
from service.errors import Conflict

# An "auto" resource, once Optuna's pruner has worked it out: a pruner that lives through a
# study.optimize estimates it once, at its first decision after a trial completes, and keeps
# it. Rebuilt per report here, it would estimate again from the trials completed by then (and
# move Hyperband's brackets as longer trials complete), so the first estimate is kept on the study.
AUTO_RESOURCE_KEY = "hpo:auto_resource"


def report_committed(storage: BaseStorage, trial_id: int, step: int, value: float) -> None:
    """A report as Optuna's trial.report makes it, through the storage and committed there, so the
    pruner sees it as it would in a notebook. A step reported before keeps its first value."""
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial already finished: trial {trial_id} is {trial.state.name}; it takes no more reports")
    if step not in trial.intermediate_values:
        storage.set_trial_intermediate_value(trial_id, step, value)


def should_prune(storage: BaseStorage, study_id: int, pruner: optuna.pruners.BasePruner, trial_id: int) -> bool:
    """trial.should_prune() itself: the pruner on the study and trial as the storage has them."""
    study = optuna.load_study(study_name=storage.get_study_name_from_id(study_id), storage=storage, pruner=pruner)
    auto = auto_resource(pruner)
    known = storage.get_study_system_attrs(study_id).get(AUTO_RESOURCE_KEY) if auto else None
    if auto and known is not None:
        auto.set(known)
    decision = pruner.prune(study, storage.get_trial(trial_id))
    if auto and known is None and (estimate := auto.estimate()) is not None:
        storage.set_study_system_attr(study_id, AUTO_RESOURCE_KEY, estimate)
    return decision
