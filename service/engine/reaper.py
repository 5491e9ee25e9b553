"""The reaper: fails trials whose workers went silent, retries them, and tidies checkpoints.

Staleness is Optuna's: `optuna.storages.fail_stale_trials` fails a RUNNING trial whose last
heartbeat is older than the grace period (the lease), and the storage's callback re-queues it
as WAITING up to the study's max_retries (storage.RetryPerStudy). Every API process runs the
loop; a PostgreSQL advisory lock lets one at a time do a tick. Claims also reap the study they
lock, so a lost trial is noticed even between ticks."""

from __future__ import annotations

import logging
import threading
import warnings
from datetime import datetime, timedelta

import optuna
from optuna.storages import BaseStorage, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import studies as study_rows
from service.db.models import StudyRecord
from service.engine import checkpoints
from service.engine.checkpoints import ArtifactStore
from service.engine.optuna_adapter import rows as optuna_rows
from service.engine.optuna_adapter.internals import study_id as study_id_of
from service.engine.optuna_adapter.internals import trial_id as trial_id_of
from service.engine.factories import load_study
from service.engine.storage import grace_period, optuna_errors, retry_callback
from service.engine.state import EngineState
from service.engine.studies import spec_of
from service.metrics import REAPER_ACTIONS
from service.settings import Settings

log = logging.getLogger("hpo.reaper")

# pg_advisory_lock key for the reaper ("hpo reap" in ASCII); hpo migrate uses another.
REAPER_LOCK_KEY = 0x68706F2072656170


def _study(storage: BaseStorage, record: StudyRecord) -> optuna.Study:
    spec = spec_of(record)
    retry_callback(storage).retries_for(record.optuna_name, spec.budget.max_retries)
    return load_study(storage, record.optuna_name, spec)


def reap_study(session: Session, storage: BaseStorage, state: EngineState, record: StudyRecord) -> int:
    """Fail (and maybe retry) the study's stale trials, and end their leases. Call it holding
    the study's row lock, inside the caller's transaction."""
    grace = _grace(storage)
    if not state.outages.settled(grace):
        return 0
    with optuna_errors():
        study = _study(storage, record)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
        # What is still running, from the flat path's view (service/engine/coordination.py): one
        # small read, however many trials the study has or how many run now.
        view = state.views.study_trials(storage, study_id_of(study))
        with view.lock:
            unfinished = dict(view.unfinished)
        running = [trial_id for trial_id, state in unfinished.items() if state == TrialState.RUNNING]
        ended = 0
        for lease in study_rows.open_leases(session, record.id):
            if lease.trial_id not in unfinished:
                lease.ended_at = study_rows.now(session)
                # Not "failed": a late finish(failed) from the lost worker must still get 409.
                lease.outcome = "lost"
                lease.epochs = optuna_rows.lease_epochs()
                lease.error = (
                    f"lease lost: no heartbeat from worker {lease.worker_id} for more than the "
                    "grace period; failed by the reaper"
                )
                ended += 1
        ended += _fail_orphans(session, storage, study, record, grace, running)
    if ended:
        REAPER_ACTIONS.labels(action="failed").inc(ended)
    return ended


def _fail_orphans(
    session: Session, storage: BaseStorage, study: optuna.Study, record: StudyRecord, grace: float, running: list[int]
) -> int:
    """RUNNING trials without a lease: a claim asked Optuna for the trial (which commits at
    once) but died before its lease committed (API killed, database gone). Without a lease no
    worker has it; older than the grace period, it is failed and retried like a lost one."""
    leased = study_rows.leased_among(session, running)
    cutoff = datetime.now() - timedelta(seconds=grace)  # Optuna stores naive local start times
    candidates = [storage.get_trial(trial_id) for trial_id in running if trial_id not in leased]
    orphans = [t for t in candidates if t.datetime_start is not None and t.datetime_start < cutoff]
    for t in orphans:
        try:
            storage.set_trial_state_values(trial_id_of(t), TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry_callback(storage)(study, storage.get_trial(trial_id_of(t)))
        log.warning("failed orphaned trial %s#%d (claimed, but its lease never committed)", record.name, t.number)
    return len(orphans)


def _grace(storage: BaseStorage) -> float:
    return grace_period(storage)


def retry_lost_trial(storage: BaseStorage, record: StudyRecord, trial_id: int) -> None:
    """Queue a retry of a finished (failed) trial, as the reaper does for a stale one."""
    with optuna_errors():
        study = _study(storage, record)
        retry_callback(storage)(study, storage.get_trial(trial_id))


def tick(sessions: sessionmaker[Session], storage: BaseStorage, state: EngineState, store: ArtifactStore, settings: Settings) -> int:
    """One pass over every study with running trials (leased or orphaned), if no other process
    is doing one."""
    reaped = 0
    with sessions() as lock_session:
        if not lock_session.execute(select(func.pg_try_advisory_lock(REAPER_LOCK_KEY))).scalar_one():
            return 0
        try:
            with sessions.begin() as session:
                # Studies with a lease to check, and those with an orphan (a RUNNING trial that
                # never got a lease): no claim reaps an orphan whose study has nothing else open.
                study_ids = sorted(
                    set(study_rows.studies_with_open_leases(session))
                    | set(optuna_rows.studies_with_unleased_running_trials(session.connection()))
                )
            for study_id in study_ids:
                # One transaction per study: never two studies' row locks at once (as in claims).
                with sessions.begin() as session:
                    record = study_rows.lock_study(session, study_id)
                    if record is not None:
                        reaped += reap_study(session, storage, state, record)
            with sessions.begin() as session:
                checkpoints.tidy(session, storage, state.views, store, settings)
        finally:
            lock_session.execute(select(func.pg_advisory_unlock(REAPER_LOCK_KEY)))
            lock_session.commit()
    return reaped


class Reaper(threading.Thread):
    """Runs `tick` every settings.reaper_seconds until stopped; survives database outages."""

    def __init__(
        self, sessions: sessionmaker[Session], storage: BaseStorage, state: EngineState, store: ArtifactStore, settings: Settings
    ) -> None:
        super().__init__(daemon=True, name="hpo-reaper")
        self._sessions, self._storage, self._settings = sessions, storage, settings
        self._state, self._store = state, store
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self._settings.reaper_seconds):
            try:
                n = tick(self._sessions, self._storage, self._state, self._store, self._settings)
                if n:
                    log.info("reaper: failed %d stale trial(s)", n)
            except Exception as exc:  # the database may be away (Outages saw it); the next tick tries again
                log.warning("reaper tick failed: %s", exc)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
