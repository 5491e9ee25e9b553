"""Leases and fencing: which worker holds a trial, until when, and the checks every call on a
trial starts with (its lease is current, its study the caller's, its trial not ended).

Every function runs inside the caller's transaction, on a lease row it locks
(db.studies.lock_lease / lock_leases, SELECT ... FOR UPDATE)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import Lease, StudyRecord, Team
from service.engine.optuna_adapter import rows as optuna_rows
from service.errors import Gone, LeaseLost, NotFound
from service.settings import Settings


class Held(NamedTuple):
    """A trial's lease, locked for this transaction, its study, and the database's clock. The
    lease and the study are ORM objects (lock_lease) or plain rows (lock_leases, the report path)."""

    lease: Lease | study_rows.LeaseRow
    record: StudyRecord | study_rows.StudyRow
    now: datetime


def checked_lease(
    found: tuple[Lease | study_rows.LeaseRow, StudyRecord | study_rows.StudyRow | None, datetime] | None,
    team: Team,
    trial_id: int,
    lease_id: str,
) -> Held:
    """The lease as lock_lease(s) found it, if it is `lease_id` and the team's; else the error
    the caller gets (Gone, NotFound, LeaseLost)."""
    lease, record, now = found if found is not None else (None, None, None)
    if lease is not None and lease.study_id is None and lease.team_id in (team.id, None):
        # None: a tombstone from before leases recorded their team.
        raise Gone(f"trial {trial_id}'s study was deleted; drop the trial and claim other work")
    if lease is None or record is None or record.team_id != team.id:
        raise NotFound(f"no trial with id {trial_id}")
    if lease.lease_id != lease_id:
        raise LeaseLost(f"lease {lease_id} is not the current lease of trial {trial_id}")
    assert now is not None
    return Held(lease, record, now)


def current(session: Session, team: Team, trial_id: int, lease_id: str) -> Held:
    """The trial's current lease, locked, ended or not."""
    return checked_lease(study_rows.lock_lease(session, trial_id), team, trial_id, lease_id)


def live(held: Held) -> Held:
    """The lease, unless its trial has ended (LeaseLost)."""
    if held.lease.ended_at is not None:
        raise LeaseLost(f"trial {held.lease.trial_id} already ended ({held.lease.outcome}); its lease is no longer valid")
    return held


def live_lease(session: Session, team: Team, trial_id: int, lease_id: str) -> Held:
    """The trial's current lease, locked, if its trial is still running."""
    return live(current(session, team, trial_id, lease_id))


def is_fresh(held: Held, settings: Settings) -> bool:
    """Whether the lease was extended less than half a heartbeat interval ago. Reports leave such
    a lease as it is: fast epochs report many times per heartbeat, and the worker's heartbeat
    thread keeps the lease anyway."""
    lease_length = timedelta(seconds=settings.lease_seconds)
    return held.lease.expires_at - held.now > lease_length - timedelta(seconds=settings.heartbeat_seconds / 2)


def extend(session: Session, trial_ids: list[int], settings: Settings) -> None:
    """The leases (locked in this transaction) run a lease length from now, and their trials'
    Optuna heartbeats are recorded: Optuna's heartbeat decides staleness (the reaper), the
    lease's expiry shows its horizon. Two statements whatever the number of leases."""
    optuna_rows.record_heartbeats(session.connection(), trial_ids)
    study_rows.extend_leases(session, trial_ids, settings.lease_seconds)


def heartbeat(session: Session, team: Team, trial_id: int, lease_id: str, settings: Settings) -> None:
    held = live_lease(session, team, trial_id, lease_id)
    optuna_rows.record_heartbeat(session.connection(), trial_id)
    assert isinstance(held.lease, Lease)
    held.lease.expires_at = held.now + timedelta(seconds=settings.lease_seconds)


def check_live_lease(session: Session, team: Team, trial_id: int, lease_id: str) -> None:
    """The errors a call on this lease would get (NotFound, Gone, LeaseLost), before the call
    does anything costly, such as reading a checkpoint's body."""
    live_lease(session, team, trial_id, lease_id)
