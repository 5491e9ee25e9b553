"""Claims: the next trial of a study for a worker, with its lease.

A claim locks its study's row (SELECT ... FOR NO KEY UPDATE), so claims of one study serialize
across all API processes and the budget checks (n_trials, max_concurrent) cannot race. Runs
inside the caller's transaction."""

from __future__ import annotations

import uuid
import warnings
from datetime import timedelta
from typing import Any

import optuna
from optuna.storages import BaseStorage
from sqlalchemy import func
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import Lease
from service.engine import budgets, checkpoints
from service.engine.optuna_adapter import rows as optuna_rows
from service.engine.optuna_adapter.internals import created_trial, next_waiting
from service.engine.optuna_adapter.internals import trial_id as trial_id_of
from service.engine.factories import load_study, suggest
from service.engine.lr_analysis import effective_spec
from service.engine.reaper import reap_study
from service.engine.storage import optuna_errors
from service.engine.state import EngineState
from service.engine.studies import spec_of
from service.settings import Settings
from service.spec import Assignment


def try_claim(
    session: Session,
    storage: BaseStorage,
    state: EngineState,
    study_id: int,
    worker_id: str,
    settings: Settings,
    pinned: dict[str, Any] | None = None,
) -> Assignment | None:
    """The study's next trial, or None. `pinned`: params the trial must have (a fused group's
    shape, engine/group_claims.py): sampled around them, and a queued retry is handed out only
    if it has them (else None: it waits for a claim it fits)."""
    record = study_rows.lock_study(session, study_id)
    if record is None or record.stopped:
        return None
    spec = spec_of(record)
    running, expired = study_rows.open_lease_state(session, record.id)
    if expired:
        # Only then can a trial be stale; the background reaper covers the rest (orphans).
        reap_study(session, storage, state, record)
        running = study_rows.running_count(session, record.id)
    narrowed = effective_spec(session, storage, record, spec)
    if narrowed is None:
        return None  # its LR range test (a study of its own) has not finished yet
    spec = narrowed
    if running >= spec.budget.max_concurrent:
        return None
    if budgets.exhausted(session, record, spec):
        return None  # epochs, seconds or the deadline: the running trials finish, nothing more starts
    conn = session.connection()
    with optuna_errors():
        # Incremental (coordination.py): the new and the unfinished trials, not all of them.
        study_id = state.views.optuna_study_id(storage, record.id, record.optuna_name)
        known = state.views.study_trials(storage, study_id, conn=conn)
    started = known.originals
    if started >= spec.budget.n_trials and not known.waiting:
        return None
    if pinned and known.waiting and not _next_waiting_fits(storage, study_id, pinned):
        return None
    with optuna_errors():
        study = load_study(
            storage, record.optuna_name, spec, n_claimed=started, search_spaces=known.search_spaces, pinned=pinned
        )
        # A WAITING retry comes first (Optuna pops it), keeping its params and inherited curve.
        with warnings.catch_warnings():
            # Optuna expects heartbeats only inside study.optimize; here leases drive them.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            if known.waiting:
                trial = study.ask()
            else:
                # What ask() does when nothing waits, without its own search for a WAITING trial
                # (a read of every unfinished trial, whole), which the view above has just done.
                trial = optuna.trial.Trial(study, storage.create_new_trial(study_id))
        params = suggest(trial, spec)
        # In this transaction (optuna_rows), not through the storage: two statements, not two
        # round trips of checkout, reads and commit each.
        trial_id = trial_id_of(trial)
        optuna_rows.set_user_attrs(conn, trial_id, {"worker_id": worker_id})
        optuna_rows.record_heartbeat(conn, trial_id)
        # The trial as Trial() read it when ask() made it (a retry's lineage is copied in at
        # creation); asking the storage again would read the whole trial a second time.
        frozen = created_trial(trial)
        attrs = frozen.system_attrs if frozen is not None else storage.get_trial_system_attrs(trial_id)
        history = list(attrs.get("retry_history", []))
    retry_of = history[-1] if history else None
    workload = spec.workload
    if "seed" in params and spec.kind == "lr_sweep":
        # A sweep's seed axis: the workload's seed, moved per run (data split, init, shuffle).
        workload = workload.model_copy(update={"seed": workload.seed + int(params.pop("seed"))})
    lease = Lease(
        trial_id=trial_id,
        study_id=record.id,
        team_id=record.team_id,
        number=trial.number,
        lease_id=str(uuid.uuid4()),
        worker_id=worker_id,
        expires_at=func.now() + timedelta(seconds=settings.lease_seconds),
        attempt=len(history) + 1,
        retry_of=retry_of,
        inherited=len(frozen.intermediate_values) if frozen is not None else 0,
    )
    session.add(lease)
    session.flush()
    resume = checkpoints.resumable(session, storage, record, history)
    return Assignment(
        trial_id=lease.trial_id,
        lease_id=lease.lease_id,
        study=record.name,
        number=trial.number,
        params=params,
        workload=workload,
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        direction=spec.direction,
        attempt=lease.attempt,
        retry_of=retry_of,
        resume_step=None if resume is None else resume.step,
        task="lr_finder" if spec.kind == "lr_finder" else "train",
        finder=spec.finder if spec.kind == "lr_finder" else None,
        objectives=[o.name for o in spec.objectives] if spec.objectives else None,
    )


def _next_waiting_fits(storage: BaseStorage, optuna_study_id: int, pinned: dict[str, Any]) -> bool:
    """Whether the WAITING trial ask() would pop next has the pinned params. A retry keeps its
    params; one of another shape waits for a group it fits."""
    with optuna_errors():
        first = next_waiting(storage, optuna_study_id)
    if first is None:
        return True
    # A retry has its params; a trial enqueued (optuna-dashboard, enqueue_trial) only fixed ones.
    given = {**first.system_attrs.get("fixed_params", {}), **first.params}
    return all(given.get(name, value) == value for name, value in pinned.items())
