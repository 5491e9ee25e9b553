"""A claim across a team's studies: which to try, in what order, and one study's failure kept
its own.

A study whose definition no longer builds, whose Optuna study was removed under it, or whose
sampler fails, used to answer every claim that reached it with a 500 (the review's finding 3),
and while it ranked first no worker of the team got work. Here the failure of one study is
caught, logged and written on its row (`broken_reason`, `broken_at`): claims skip it for
BROKEN_REST_SECONDS and then try it again, so a passing fault heals itself, and the API shows the
reason. A database outage is not a study's fault: it still answers 503."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, update
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import StudyRecord, Team
from service.engine import budgets, claims
from service.engine.lr_analysis import finder_name
from service.engine.state import EngineState
from service.engine.storage import not_the_studys_fault, optuna_errors
from service.engine.studies import describe, spec_of
from service.settings import Settings
from service.spec import Assignment, StudySpec

log = logging.getLogger("hpo.claims")

BROKEN_REST_SECONDS = 60.0
T = TypeVar("T")


def resting(record: StudyRecord, now: datetime) -> bool:
    """Marked broken a moment ago: not tried again yet."""
    return record.broken_at is not None and now - record.broken_at < timedelta(seconds=BROKEN_REST_SECONDS)


def mark_broken(session: Session, study_id: int, exc: BaseException) -> None:
    reason = describe(exc)
    log.warning("study %s cannot be served; claims skip it for %.0f s: %s", study_id, BROKEN_REST_SECONDS, reason, exc_info=exc)
    session.execute(update(StudyRecord).where(StudyRecord.id == study_id).values(broken_reason=reason, broken_at=func.now()))
    session.info["hpo_marked_broken"] = True


def _isolated(session: Session, record: StudyRecord, work: Callable[[], T]) -> tuple[bool, T | None]:
    """(True, work()) or, when the study itself is at fault, (False, None) with the study marked."""
    try:
        # No savepoint: what fails here is Python (the definition) or Optuna's storage, on its
        # own connections; this transaction's reads are untouched.
        return True, work()
    except Exception as exc:
        if not_the_studys_fault(exc):
            raise
        mark_broken(session, record.id, exc)
        return False, None


def candidates(session: Session, storage: BaseStorage, team: Team, only: Sequence[str] | None) -> list[int]:
    """The team's studies that may have work, least busy (relative to max_concurrent) first.

    Read without locks: try_claim re-checks under the study's row lock."""
    # This process's clock, not a round trip for the database's: a rest of a minute can take
    # the skew between the two.
    now = datetime.now(timezone.utc)
    records = [r for r in study_rows.list_studies(session, team.id) if not r.stopped and not resting(r, now)]
    # Each definition validated once, and only where needed; one that fails marks its study.
    specs: dict[int, StudySpec | None] = {}

    def spec(r: StudyRecord) -> StudySpec | None:
        if r.id not in specs:
            specs[r.id] = _isolated(session, r, lambda: spec_of(r))[1]
        return specs[r.id]

    if only:
        asked = set(only)
        # A study's LR range test (auto_lr_range) is part of it: a worker asked for the study runs it.
        finders = {finder_name(s) for r in records if r.name in asked and (s := spec(r)) is not None and s.auto_lr_range}
        records = [r for r in records if r.name in asked | finders]
    usable = [(r, s) for r in records if (s := spec(r)) is not None]
    counts = study_rows.lease_counts(session, [r.id for r, _ in usable])
    ranked = []
    for r, s in usable:
        budget = s.budget
        originals, running = counts[r.id]
        # Stale leases still count as running here; try_claim reaps them under the lock.
        if budgets.has_compute_budget(s) and budgets.exhausted(session, r, s):
            continue
        if originals < budget.n_trials or _isolated(session, r, lambda r=r: bool(waiting_trials(storage, r)))[1]:
            ranked.append((running / budget.max_concurrent, r.id))
    if session.info.pop("hpo_marked_broken", False):
        # The marks commit before a claim locks a study's row: one row lock at a time, always.
        session.commit()
    return [sid for _, sid in sorted(ranked)]


def waiting_trials(storage: BaseStorage, record: StudyRecord) -> list[FrozenTrial]:
    """Trials queued in Optuna: retries of lost trials (and any enqueued in the dashboard)."""
    with optuna_errors():
        study_id = storage.get_study_id_from_name(record.optuna_name)
        return storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))


def claim_any(
    session: Session, storage: BaseStorage, state: EngineState, study_ids: Sequence[int], worker_id: str, settings: Settings
) -> Assignment | None:
    """The first assignment any of `study_ids` gives, in order, one transaction per study tried:
    row locks are never held on two studies at once, so concurrent claims cannot deadlock
    whatever order they try studies in. (The first is the one the candidates were read in.)"""
    for study_id in study_ids:
        try:
            assignment = claims.try_claim(session, storage, state, study_id, worker_id, settings)
        except Exception as exc:
            if not_the_studys_fault(exc):
                raise
            session.rollback()
            mark_broken(session, study_id, exc)
            session.commit()
            continue
        if assignment is not None:
            # It serves again: whatever broke it has passed. (The row try_claim locked, from
            # the session's identity map: no statement unless there is a mark to clear.)
            record = session.get(StudyRecord, study_id)
            if record is not None and record.broken_reason is not None:
                record.broken_reason, record.broken_at = None, None
        session.commit()
        if assignment is not None:
            return assignment
    return None
