"""The flat coordination path: what claims and pruning decisions need of a study's trials,
kept in memory per API process and refreshed incrementally from Optuna's storage.

Optuna stays the source of truth. Each refresh reads only the trials that are new since the last
one (trial ids only grow) plus the ones that were not finished then (a handful: the running and
waiting ones), and of those only (id, state), plus the curves of trials that completed since. So a
claim or a report costs the same at 100 and at 10,000 earlier trials. Every request refreshes
before it reads, so API processes agree through the database, not through each other. A finished
trial never changes in Optuna (intermediate values and state are frozen), which is what makes
keeping it safe.

The completed trials' values are kept here per step, as the trials complete, so a median or
percentile decision (pruning.py) compares against a ready array instead of walking every
completed trial (O(completed trials) of Python per report, the one cost of a report that grew
with the study)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from service.engine.optuna_adapter import reads as optuna_reads
from service.engine.optuna_adapter.internals import trial_id as trial_id_of
from service.engine.pruning import AtStep
from service.engine.storage import CARRIED_KEY, database_engine

# Studies whose trials one API process keeps (TrialViews).
MAX_STUDIES = 256

@dataclass
class _Completed:
    """A completed trial's curve (the pruner reads the per-step arrays built from these)."""

    intermediate_values: dict[int, float]


@dataclass
class StudyTrials:
    study_id: int
    # Trials not finished at the last refresh (RUNNING, WAITING): read again every time.
    unfinished: dict[int, TrialState] = field(default_factory=dict)
    completed: list[_Completed] = field(default_factory=list)
    # Per step, the completed trials' values at that step, in completion order (what a percentile
    # pruner compares with), and an array of each, built on first use after it changed.
    by_step: dict[int, list[float]] = field(default_factory=dict)
    _arrays: dict[int, np.ndarray] = field(default_factory=dict)
    # Lineages started: trials that are not retries (Optuna's retry_history), as service budgets count.
    originals: int = 0
    # The highest trial id seen. Optuna creates a study's trials one at a time (create_new_trial
    # locks the study's row until it commits), so they become visible in id order: every trial
    # of the study with a lower id has been seen.
    max_trial_id: int = -1
    # The best COMPLETE trials' ids (one, or a multi-objective study's Pareto front), with the
    # number of completed trials they were read at: they change only when a trial completes
    # (best_trial_ids).
    best: tuple[int, frozenset[int]] | None = None
    # The samplers' incremental search spaces for this study, carried from claim to claim
    # (factories.keep_search_spaces).
    search_spaces: dict[str, Any] = field(default_factory=dict)
    # Refreshes run their reads outside the lock, so several may be in flight; one that started
    # before the last one applied only adds what cannot go back (new trials, finished states).
    _started: int = 0
    _applied: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self, storage: BaseStorage) -> None:
        engine = database_engine(storage)
        if engine is not None:
            with engine.connect() as conn:
                self.refresh_on(conn)
            return
        with self.lock:
            for t in storage.get_all_trials(self.study_id, deepcopy=False):
                trial_id = trial_id_of(t)
                if not self._known(trial_id) or trial_id in self.unfinished:
                    retry = bool(t.system_attrs.get("retry_history")) or CARRIED_KEY in t.system_attrs
                    self._note(trial_id, t.state, retry, t.intermediate_values)

    def refresh_on(self, conn: Any) -> None:
        """Three small reads: (id, state) of the new and the unfinished trials, which of the
        new ones are retries, and the curves of those that completed since the last refresh.
        Whole trials (params, attributes) are never read here. Takes `lock` only around the
        bookkeeping, not the reads: concurrent reports of one study don't queue on it."""
        with self.lock:
            self._started += 1
            started, seen, unfinished = self._started, self.max_trial_id, list(self.unfinished)
        rows = optuna_reads.trial_states(conn, self.study_id, after=seen, also=unfinished)
        with self.lock:
            new = [trial_id for trial_id, _ in rows if not self._known(trial_id)]
            ending = [t for t, s in rows if s == TrialState.COMPLETE and (t in new or t in self.unfinished)]
        # Carried-in trials are no lineage of this study's either (the budget's count).
        retries = optuna_reads.with_system_attr(conn, new, ("retry_history", CARRIED_KEY))
        curves = optuna_reads.curves(conn, ending)
        with self.lock:
            stale = started < self._applied
            self._applied = max(self._applied, started)
            for trial_id, state in sorted(rows):
                if self._known(trial_id) and trial_id not in self.unfinished:
                    continue  # finished, and noted as such already
                if stale and self._known(trial_id) and not state.is_finished():
                    continue  # a newer refresh has this unfinished trial's state already
                self._note(trial_id, state, trial_id in retries, curves.get(trial_id, {}))

    def _known(self, trial_id: int) -> bool:
        return trial_id <= self.max_trial_id

    def _note(self, trial_id: int, state: TrialState, retry: bool, curve: dict[int, float]) -> None:
        if not self._known(trial_id):
            self.max_trial_id = trial_id
            if not retry:
                self.originals += 1
        if not state.is_finished():
            self.unfinished[trial_id] = state
            return
        self.unfinished.pop(trial_id, None)
        if state == TrialState.COMPLETE:
            self.completed.append(_Completed(dict(curve)))
            for step, value in curve.items():
                self.by_step.setdefault(step, []).append(value)
                self._arrays.pop(step, None)

    def at_step(self, step: int | None) -> AtStep:
        """What a percentile pruner reads of the completed trials for a trial at `step`.
        Call it holding `lock`."""
        if step is None:
            return AtStep(len(self.completed))
        values = self._arrays.get(step)
        if values is None:
            values = self._arrays[step] = np.asarray(self.by_step.get(step, []), dtype=float)
        return AtStep(len(self.completed), values)

    @property
    def waiting(self) -> int:
        with self.lock:
            return sum(1 for s in self.unfinished.values() if s == TrialState.WAITING)


class TrialViews:
    """One process's trial views, of the studies of its one database, the least recently used
    beyond MAX_STUDIES dropped (and rebuilt, with one full read, when used again). Held by the
    process's EngineState (service/engine/state.py), never in a module global: tests run several
    databases in one process, each with its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._studies: OrderedDict[int, StudyTrials] = OrderedDict()
        self._study_ids: OrderedDict[int, int] = OrderedDict()

    def _entry(self, study_id: int) -> StudyTrials:
        with self._lock:
            entry = self._studies.get(study_id)
            if entry is None:
                entry = self._studies[study_id] = StudyTrials(study_id)
            self._studies.move_to_end(study_id)
            while len(self._studies) > MAX_STUDIES:
                self._studies.popitem(last=False)
        return entry

    def study_trials(self, storage: BaseStorage, study_id: int, *, conn: Any = None) -> StudyTrials:
        """The study's trials as of now (refreshed; on `conn`, the caller's connection, if given)."""
        trials = self._entry(study_id)
        if conn is None or database_engine(storage) is None:
            trials.refresh(storage)
        else:
            trials.refresh_on(conn)
        return trials

    def best_trial_ids(self, storage: BaseStorage, study_id: int) -> frozenset[int]:
        """The ids of the study's best COMPLETE trials: Optuna's get_best_trial, or a
        multi-objective study's Pareto front (best_trials); none before one completes. Optuna
        reads them from every complete trial of the study; they are read again only once another
        trial has completed since, so a caller that asks on every reaper tick (the checkpoint
        tidy) pays for it once per completion, not once per tick."""
        trials = self.study_trials(storage, study_id)
        with trials.lock:
            completed, known = len(trials.completed), trials.best
        if known is not None and known[0] == completed:
            return known[1]
        best: frozenset[int]
        if len(storage.get_study_directions(study_id)) > 1:
            study = optuna.load_study(study_name=storage.get_study_name_from_id(study_id), storage=storage)
            best = frozenset(trial_id_of(t) for t in study.best_trials)
        else:
            try:
                best = frozenset({trial_id_of(storage.get_best_trial(study_id))})
            except ValueError:  # no complete trial yet
                best = frozenset()
        with trials.lock:
            # A trial that completed after the count above may be in `best` already: kept with
            # the older count, the next call reads it again, which costs a read and is never wrong.
            trials.best = (completed, best)
        return best

    def optuna_study_id(self, storage: BaseStorage, record_id: int, optuna_name: str) -> int:
        """Optuna's id of one of our study records' study. Keyed by our record's id, which a
        study deleted and created again under the same name does not keep: the mapping cannot
        go stale."""
        with self._lock:
            found = self._study_ids.get(record_id)
        if found is None:
            found = storage.get_study_id_from_name(optuna_name)
            with self._lock:
                self._study_ids[record_id] = found
                while len(self._study_ids) > 4 * MAX_STUDIES:
                    self._study_ids.popitem(last=False)
        return found
