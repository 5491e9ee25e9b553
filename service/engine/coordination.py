"""The flat coordination path: what claims and pruning decisions need of a study's trials,
kept in memory per API process and refreshed incrementally from Optuna's storage.

Optuna stays the source of truth. Each refresh reads only the trials that are new since the last
one (trial ids only grow) plus the ones that were not finished then (a handful: the running and
waiting ones), so a claim or a report costs the same at 100 and at 10,000 earlier trials. Every
request refreshes before it reads, so API processes agree through the database, not through each
other. A finished trial never changes in Optuna (intermediate values and state are frozen), which
is what makes keeping it safe.

Pruning runs Optuna's own pruner (`pruner.prune(view, trial)`) on a view whose `get_trials`
answers from here: the decisions are Optuna's by construction (bench/coordination.py checks them
against a plain Optuna study step by step)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# Studies whose trials one API process keeps; the least recently used beyond that are dropped
# (and rebuilt, with one full read, when used again).
MAX_STUDIES = 256


@dataclass
class _Completed:
    """All a percentile pruner reads of a completed trial."""

    intermediate_values: dict[int, float]
    state: TrialState = TrialState.COMPLETE


@dataclass
class StudyTrials:
    study_id: int
    max_trial_id: int = -1
    # Trials not finished at the last refresh (RUNNING, WAITING): read again every time.
    unfinished: dict[int, TrialState] = field(default_factory=dict)
    completed: list[_Completed] = field(default_factory=list)
    # Lineages started: trials that are not retries (Optuna's retry_history), as service budgets count.
    originals: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self, storage: BaseStorage) -> None:
        with self.lock:
            for t in _trials_since(storage, self.study_id, set(self.unfinished), self.max_trial_id):
                trial_id = t._trial_id
                if trial_id > self.max_trial_id:
                    self.max_trial_id = trial_id
                    if not t.system_attrs.get("retry_history"):
                        self.originals += 1
                if not t.state.is_finished():
                    self.unfinished[trial_id] = t.state
                    continue
                self.unfinished.pop(trial_id, None)
                if t.state == TrialState.COMPLETE:
                    self.completed.append(_Completed(dict(t.intermediate_values)))

    @property
    def waiting(self) -> int:
        return sum(1 for s in self.unfinished.values() if s == TrialState.WAITING)


def _trials_since(storage: BaseStorage, study_id: int, unfinished: set[int], max_trial_id: int) -> list[FrozenTrial]:
    # RDBStorage reads "these ids, or any id above that one" in one query (the incremental read
    # Optuna's _CachedStorage uses; make_storage wraps the RDBStorage in one, and its own
    # get_all_trials would filter and sort every cached trial). Another storage: a full read.
    backend = getattr(storage, "_backend", storage)
    incremental = getattr(backend, "_get_trials", None)
    if incremental is not None:
        return incremental(study_id, None, unfinished, max_trial_id)
    return [
        t
        for t in storage.get_all_trials(study_id, deepcopy=False)
        if t._trial_id > max_trial_id or t._trial_id in unfinished
    ]


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._studies: OrderedDict[tuple[int, int], StudyTrials] = OrderedDict()

    def get(self, storage: BaseStorage, study_id: int) -> StudyTrials:
        # Keyed by the storage too: tests run several in one process, each its own database.
        key = (id(storage), study_id)
        with self._lock:
            entry = self._studies.get(key)
            if entry is None:
                entry = self._studies[key] = StudyTrials(study_id)
            self._studies.move_to_end(key)
            while len(self._studies) > MAX_STUDIES:
                self._studies.popitem(last=False)
        entry.refresh(storage)
        return entry


_registry = _Registry()


def study_trials(storage: BaseStorage, study_id: int) -> StudyTrials:
    """The study's trials as of now (refreshed)."""
    return _registry.get(storage, study_id)


class _PrunerView:
    """The part of optuna.Study a percentile/median pruner reads: completed trials and direction."""

    def __init__(self, completed: list[_Completed], direction: StudyDirection) -> None:
        self._completed = completed
        self.direction = direction

    def get_trials(self, deepcopy: bool = False, states: Container[TrialState] | None = None) -> list[Any]:
        if states is not None and tuple(states) != (TrialState.COMPLETE,):
            raise NotImplementedError("the pruner view holds only completed trials")
        return self._completed


def should_prune(
    storage: BaseStorage, study_id: int, pruner: optuna.pruners.BasePruner, direction: StudyDirection, trial: FrozenTrial
) -> bool:
    if isinstance(pruner, optuna.pruners.NopPruner):
        return False
    if not isinstance(pruner, optuna.pruners.PercentilePruner):
        # Pruners that read more than completed trials get a real study (the slow path).
        study = optuna.load_study(study_name=storage.get_study_name_from_id(study_id), storage=storage, pruner=pruner)
        return pruner.prune(study, trial)
    trials = study_trials(storage, study_id)
    with trials.lock:
        completed = list(trials.completed)
    return pruner.prune(_PrunerView(completed, direction), trial)  # type: ignore[arg-type]
