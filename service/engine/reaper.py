"""The reaper: fails trials whose workers went silent, retries them, and tidies checkpoints.

Staleness is Optuna's: `optuna.storages.fail_stale_trials` fails a RUNNING trial whose last
heartbeat is older than the grace period (the lease), and the storage's callback re-queues it
as WAITING up to the study's max_retries (storage.RetryPerStudy). Every API process runs the
loop; a PostgreSQL advisory lock lets one at a time do a tick. Claims also reap the study they
lock, so a lost trial is noticed even between ticks."""

from __future__ import annotations

import logging
import math
import threading
import time

import optuna
from optuna.storages import BaseStorage, fail_stale_trials
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import studies as study_rows
from service.db.models import StudyRecord
from service.engine import checkpoints
from service.engine.factories import load_study
from service.engine.storage import optuna_errors, retry_callback
from service.engine.studies import spec_of
from service.settings import Settings

log = logging.getLogger("hpo.reaper")

# pg_advisory_lock key for the reaper ("hpo reap" in ASCII); hpo migrate uses another.
REAPER_LOCK_KEY = 0x68706F2072656170


class _Outages:
    """When this process last failed to reach the database.

    Workers keep training through an outage but cannot heartbeat, so right after it every
    heartbeat looks stale. Reaping waits one grace period after the last failure this process
    saw, so those workers' next calls get through instead of being fenced off."""

    def __init__(self) -> None:
        self._last = -math.inf

    def note(self) -> None:
        self._last = time.monotonic()

    def settled(self, grace_seconds: float) -> bool:
        return time.monotonic() - self._last > grace_seconds


outages = _Outages()


def _study(storage: BaseStorage, record: StudyRecord) -> optuna.Study:
    spec = spec_of(record)
    retry_callback(storage).retries_for(record.optuna_name, spec.budget.max_retries)
    return load_study(storage, record.optuna_name, spec)


def reap_study(session: Session, storage: BaseStorage, record: StudyRecord) -> int:
    """Fail (and maybe retry) the study's stale trials, and end their leases. Call it holding
    the study's row lock, inside the caller's transaction."""
    if not outages.settled(_grace(storage)):
        return 0
    with optuna_errors():
        fail_stale_trials(_study(storage, record))
        ended = 0
        for lease in study_rows.open_leases(session, record.id):
            if storage.get_trial(lease.trial_id).state.is_finished():
                lease.ended_at = study_rows.now(session)
                lease.outcome = "failed"
                lease.error = (
                    f"lease lost: no heartbeat from worker {lease.worker_id} for more than the "
                    "grace period; failed by the reaper"
                )
                ended += 1
    return ended


def _grace(storage: BaseStorage) -> float:
    return float(getattr(storage, "_backend", storage).grace_period or 0)


def retry_lost_trial(storage: BaseStorage, record: StudyRecord, trial_id: int) -> None:
    """Queue a retry of a finished (failed) trial, as the reaper does for a stale one."""
    with optuna_errors():
        study = _study(storage, record)
        retry_callback(storage)(study, storage.get_trial(trial_id))


def tick(sessions: sessionmaker[Session], storage: BaseStorage, settings: Settings) -> int:
    """One pass over every study with running trials, if no other process is doing one."""
    reaped = 0
    with sessions() as lock_session:
        if not lock_session.execute(select(func.pg_try_advisory_lock(REAPER_LOCK_KEY))).scalar_one():
            return 0
        try:
            with sessions.begin() as session:
                study_ids = list(study_rows.studies_with_open_leases(session))
            for study_id in study_ids:
                # One transaction per study: never two studies' row locks at once (as in claims).
                with sessions.begin() as session:
                    record = study_rows.lock_study(session, study_id)
                    if record is not None:
                        reaped += reap_study(session, storage, record)
            with sessions.begin() as session:
                checkpoints.tidy(session, storage, settings)
        finally:
            lock_session.execute(select(func.pg_advisory_unlock(REAPER_LOCK_KEY)))
            lock_session.commit()
    return reaped


class Reaper(threading.Thread):
    """Runs `tick` every settings.reaper_seconds until stopped; survives database outages."""

    def __init__(self, sessions: sessionmaker[Session], storage: BaseStorage, settings: Settings) -> None:
        super().__init__(daemon=True, name="hpo-reaper")
        self._sessions, self._storage, self._settings = sessions, storage, settings
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self._settings.reaper_seconds):
            try:
                n = tick(self._sessions, self._storage, self._settings)
                if n:
                    log.info("reaper: failed %d stale trial(s)", n)
            except Exception as exc:  # the database may be away; the next tick tries again
                outages.note()
                log.warning("reaper tick failed: %s", exc)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
