"""The private names of Optuna's objects that the service reads, each behind a function named
for what it gives. Optuna 5.0's (pyproject.toml pins the minor version); a rename in a later
version breaks here, in one place, and in tests/test_imports.py's check that each still exists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.search_space import IntersectionSearchSpace
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "FrozenStudy",
    "SCRATCH_STUDY_LOGGER",
    "auto_resource",
    "backend_of",
    "created_trial",
    "keep_search_spaces",
    "pareto_front",
    "study_id",
    "trial_id",
]

# The logger that announces every in-memory study Optuna creates (plots' scratch studies).
SCRATCH_STUDY_LOGGER = "optuna.storages._in_memory"


def trial_id(trial: FrozenTrial | optuna.trial.Trial) -> int:
    """The storage's id of a trial (Optuna shows only its number, per study)."""
    return trial._trial_id


def next_waiting(storage: BaseStorage, optuna_study_id: int) -> FrozenTrial | None:
    """The WAITING trial Study.ask() would pop next: Study._pop_waiting_trial_id takes the first
    that get_all_trials lists (and moves on only if another process took it first)."""
    waiting = storage.get_all_trials(optuna_study_id, deepcopy=False, states=(TrialState.WAITING,))
    return waiting[0] if waiting else None


def study_id(study: optuna.Study | optuna.study.StudySummary) -> int:
    """The storage's id of a loaded study, or of a study's summary."""
    return study._study_id


def backend_of(storage: BaseStorage) -> BaseStorage:
    """The RDBStorage under Optuna's per-process cache (or the storage itself, when not wrapped)."""
    return getattr(storage, "_backend", storage)


def created_trial(trial: optuna.trial.Trial) -> FrozenTrial | None:
    """The trial as Trial() read it when ask() made it, if it kept it (a retry's lineage and
    inherited curve are copied in at creation): reading it from the storage again costs a read."""
    return getattr(trial, "_cached_frozen_trial", None)


def pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """Optuna's Pareto front of these trials (what study.best_trials is of the study's), feasible
    trials first as best_trials has it."""
    return _get_pareto_front_trials_by_trials(list(trials), list(directions), consider_constraint=True)


class AutoResource:
    """A pruner's resource left for it to estimate ("auto"): successive halving's min_resource,
    Hyperband's max_resource. The pruner keeps its estimate in the same private attribute."""

    def __init__(self, pruner: optuna.pruners.BasePruner, attribute: str) -> None:
        self._pruner, self._attribute = pruner, attribute

    def estimate(self) -> int | None:
        """What the pruner has worked out so far (None while it has not)."""
        value = getattr(self._pruner, self._attribute)
        return value if isinstance(value, int) else None

    def set(self, value: int) -> None:
        """Give the pruner an earlier decision's estimate, in place of estimating it again."""
        setattr(self._pruner, self._attribute, value)


def auto_resource(pruner: optuna.pruners.BasePruner) -> AutoResource | None:
    """The pruner's resource left to estimate, if any."""
    if isinstance(pruner, optuna.pruners.HyperbandPruner) and pruner._max_resource == "auto":
        return AutoResource(pruner, "_max_resource")
    if isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner) and pruner._min_resource is None:
        return AutoResource(pruner, "_min_resource")
    return None


# Optuna's incremental search spaces: each remembers the trial number up to which it has read the
# study (the first unfinished trial stops it) and reads only the trials after it on the next call.
_INCREMENTAL = (IntersectionSearchSpace, _GroupDecomposedSearchSpace)


def keep_search_spaces(sampler: optuna.samplers.BaseSampler, kept: dict[str, Any]) -> None:
    """Give a claim's new sampler the search spaces its study's earlier claims built, in place of
    its own empty ones (`kept`: one study's, filled on first use).

    Multivariate TPE (Optuna 5's default), GP, CMA-ES and NSGA-II/III infer the space from the
    trials, in one of Optuna's incremental objects. A sampler rebuilt for every claim (build_sampler)
    would start it empty and walk every trial of the study on each claim: at 10,000 trials that
    was a quarter of a TPE claim (docs/benchmarks.md, section a), where raw Optuna, whose sampler
    lives as long as its study, reads the trials since the last one. The object depends only on
    the study's finished trials, which never change, so any claim may carry it on; a study's
    claims are serialized by its row lock (claims.try_claim), so two never use it at once. Keyed
    by sampler class and attribute, as each class builds its own (TPE counts pruned trials in,
    the others do not)."""
    for name, value in list(vars(sampler).items()):
        if isinstance(value, _INCREMENTAL):
            setattr(sampler, name, kept.setdefault(f"{type(sampler).__name__}.{name}", value))
