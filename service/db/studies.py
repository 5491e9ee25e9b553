"""Queries on study records and leases. Callers own the transaction; nothing here commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import BigInteger, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from service.db.models import Lease, StudyRecord


def get_study(session: Session, team_id: int, name: str, *, lock: bool = False) -> StudyRecord | None:
    query = select(StudyRecord).where(StudyRecord.team_id == team_id, StudyRecord.name == name)
    if lock:
        # Claims, stops and deletes of one study serialize on this row, across API processes.
        query = query.with_for_update(of=StudyRecord, key_share=True)
    return session.scalars(query).one_or_none()


def lock_study(session: Session, study_id: int) -> StudyRecord | None:
    # FOR NO KEY UPDATE: serializes claims and reaping of the study, but does not block the
    # KEY SHARE locks that inserting a lease or checkpoint (foreign keys to this row) takes,
    # which would otherwise deadlock against a report holding its lease row.
    query = select(StudyRecord).where(StudyRecord.id == study_id).with_for_update(of=StudyRecord, key_share=True)
    return session.scalars(query).one_or_none()


def list_studies(session: Session, team_id: int) -> Sequence[StudyRecord]:
    return session.scalars(
        select(StudyRecord).where(StudyRecord.team_id == team_id).order_by(StudyRecord.created_at, StudyRecord.id)
    ).all()


def leased_among(session: Session, trial_ids: Sequence[int]) -> set[int]:
    """Which of these trials have (or had) a lease."""
    if not trial_ids:
        return set()
    return set(session.scalars(select(Lease.trial_id).where(Lease.trial_id.in_(list(trial_ids)))))


def running_count(session: Session, study_id: int) -> int:
    """Open leases of the study (the partial index ix_hpo_leases_open: no ended lease is read)."""
    return session.scalar(select(func.count()).where(Lease.study_id == study_id, Lease.ended_at.is_(None))) or 0


def open_lease_state(session: Session, study_id: int) -> tuple[int, bool]:
    """(open leases of the study, whether any of them has expired): one read of the partial index
    ix_hpo_leases_open. A lease expires no later than Optuna calls its trial stale (the grace
    period is the lease length rounded up), so no expired lease means nothing to reap."""
    count, expired = session.execute(
        select(func.count(), func.coalesce(func.bool_or(Lease.expires_at <= func.now()), False)).where(
            Lease.study_id == study_id, Lease.ended_at.is_(None)
        )
    ).one()
    return int(count), bool(expired)


def lease_counts(session: Session, study_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """study_id -> (original trials claimed so far, trials running now).

    Retries don't count against the budget: `n_trials` counts lineages."""
    if not study_ids:
        return {}
    rows = session.execute(
        select(Lease.study_id, func.count().filter(Lease.attempt == 1), func.count().filter(Lease.ended_at.is_(None)))
        .where(Lease.study_id.in_(study_ids))
        .group_by(Lease.study_id)
    ).all()
    counts = {sid: (0, 0) for sid in study_ids}
    counts.update({sid: (total, running) for sid, total, running in rows})
    return counts


def open_leases(session: Session, study_id: int) -> Sequence[Lease]:
    return session.scalars(
        select(Lease).where(Lease.study_id == study_id, Lease.ended_at.is_(None)).with_for_update()
    ).all()


def studies_with_open_leases(session: Session) -> Sequence[int]:
    return session.scalars(select(Lease.study_id).where(Lease.ended_at.is_(None), Lease.study_id.is_not(None)).distinct()).all()


def lock_lease(session: Session, trial_id: int) -> tuple[Lease, StudyRecord | None, datetime] | None:
    """The trial's lease row, locked, with its study's record (None once the study is deleted)
    and the database's clock: one round trip for what every worker-protocol call starts with."""
    query = (
        select(Lease, StudyRecord, func.now())
        .outerjoin(StudyRecord, StudyRecord.id == Lease.study_id)
        .where(Lease.trial_id == trial_id)
        .with_for_update(of=Lease)
    )
    row = session.execute(query).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


class LeaseRow(NamedTuple):
    """What the report path reads of a lease (lock_leases): the Lease columns it checks."""

    trial_id: int
    study_id: int | None
    team_id: int | None
    lease_id: str
    expires_at: datetime
    ended_at: datetime | None
    outcome: str | None


_LEASE_ROW = [getattr(Lease, name) for name in LeaseRow._fields]


class StudyRow(NamedTuple):
    """What the report path reads of a lease's study with the lease (lock_leases); the study's
    definition never changes, so callers keep it (study_spec) rather than read it each time."""

    id: int
    team_id: int
    optuna_name: str
    stopped: bool


_STUDY_ROW = [getattr(StudyRecord, name) for name in StudyRow._fields]


def lock_leases(session: Session, trial_ids: Sequence[int]) -> dict[int, tuple[LeaseRow, StudyRow | None, datetime]]:
    """lock_lease for several trials in one read whatever their number: the leases, locked in
    trial id order (two batches locking overlapping leases take them in the same order), as
    plain rows (extend_leases writes them), each with its study's row but not its definition."""
    if not trial_ids:
        return {}
    ids = bindparam("trial_ids", sorted(set(trial_ids)), type_=ARRAY(BigInteger))
    query = (
        select(*_LEASE_ROW, *_STUDY_ROW, func.now())
        .outerjoin(StudyRecord, StudyRecord.id == Lease.study_id)
        .where(Lease.trial_id == any_(ids))
        .order_by(Lease.trial_id)
        .with_for_update(of=Lease)
    )
    found = {}
    n = len(_LEASE_ROW)
    for row in session.execute(query):
        lease, study = LeaseRow(*row[:n]), row[n : n + len(_STUDY_ROW)]
        found[lease.trial_id] = (lease, None if study[0] is None else StudyRow(*study), row[-1])
    return found


def study_spec(session: Session, study_id: int) -> dict | None:
    """A study's definition as stored (JSON)."""
    return session.execute(select(StudyRecord.spec).where(StudyRecord.id == study_id)).scalar_one_or_none()


def extend_leases(session: Session, trial_ids: Sequence[int], seconds: float) -> None:
    """Leases locked by lock_leases run `seconds` from the transaction's now(), in one statement."""
    if trial_ids:
        ids = bindparam("trial_ids", sorted(set(trial_ids)), type_=ARRAY(BigInteger))
        session.execute(
            update(Lease)
            .where(Lease.trial_id == any_(ids))
            .values(expires_at=func.now() + timedelta(seconds=seconds))
            .execution_options(synchronize_session=False)
        )


def leases_by_trial(session: Session, study_id: int) -> dict[int, Lease]:
    return {lease.trial_id: lease for lease in session.scalars(select(Lease).where(Lease.study_id == study_id))}


def now(session: Session) -> datetime:
    """The database's clock, so that lease expiry does not depend on API hosts agreeing on time."""
    return session.execute(select(func.now())).scalar_one()


def owner_of_optuna_study(session: Session, optuna_name: str) -> int | None:
    """The team whose study is stored in Optuna under this name, if the service manages it."""
    return session.scalar(select(StudyRecord.team_id).where(StudyRecord.optuna_name == optuna_name))


class LeaseUsage(NamedTuple):
    """What a study's leases have used, for its compute budgets (service/engine/budgets.py)."""

    ended_epochs: int  # reported by the leases that ended
    running: int
    running_inherited: int  # epochs the running retries started with
    seconds: float  # claim to end (or to now) of every lease
    now: datetime


def lease_usage(session: Session, study_id: int) -> LeaseUsage:
    now = func.now()
    running = Lease.ended_at.is_(None)
    row = session.execute(
        select(
            func.coalesce(func.sum(Lease.epochs).filter(~running), 0),
            func.count().filter(running),
            func.coalesce(func.sum(Lease.inherited).filter(running), 0),
            func.coalesce(func.sum(func.extract("epoch", func.coalesce(Lease.ended_at, now) - Lease.created_at)), 0),
            now,
        ).where(Lease.study_id == study_id)
    ).one()
    return LeaseUsage(int(row[0]), int(row[1]), int(row[2]), float(row[3]), row[4])
