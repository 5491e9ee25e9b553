"""The worker protocol: claim, report, heartbeat, finish, with leases and fencing.

Every function runs inside the caller's transaction. A claim locks its study's row
(SELECT ... FOR UPDATE), so claims of one study serialize across all API processes and the
budget checks (n_trials, max_concurrent) cannot race."""

from __future__ import annotations

import math
import uuid
import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, BinaryIO, NamedTuple

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import Lease, StudyRecord, Team
from service.engine import budgets, checkpoints
from service.engine.diagnosis import diagnose
from service.engine.reaper import reap_study, retry_lost_trial
from service.engine import coordination, optuna_pruning, optuna_rows
from service.engine.factories import build_pruner, load_study, suggest
from service.engine.lr_analysis import effective_spec, finder_name
from service.engine.storage import CONSTRAINTS_KEY, backend_of, optuna_errors
from service.engine.studies import spec_of
from service.errors import Gone, InvalidRequest, LeaseLost, NotFound
from service.metrics import finished as count_finished
from service.settings import Settings
from service.spec import Assignment, FinishState, StudySpec
from service.spec.objectives import objective_values

_OPTUNA_STATE = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


def try_claim(
    session: Session, storage: BaseStorage, study_id: int, worker_id: str, settings: Settings
) -> Assignment | None:
    record = study_rows.lock_study(session, study_id)
    if record is None or record.stopped:
        return None
    spec = spec_of(record)
    running, expired = study_rows.open_lease_state(session, record.id)
    if expired:
        # Only then can a trial be stale; the background reaper covers the rest (orphans).
        reap_study(session, storage, record)
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
        study_id = coordination.optuna_study_id(storage, record.id, record.optuna_name)
        known = coordination.study_trials(storage, study_id, conn=conn)
    started = known.originals
    if started >= spec.budget.n_trials and not known.waiting:
        return None
    with optuna_errors():
        study = load_study(storage, record.optuna_name, spec, n_claimed=started, search_spaces=known.search_spaces)
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
        optuna_rows.set_user_attrs(conn, trial._trial_id, {"worker_id": worker_id})
        optuna_rows.record_heartbeat(conn, trial._trial_id)
        # The trial as Trial() read it when ask() made it (a retry's lineage is copied in at
        # creation); asking the storage again would read the whole trial a second time.
        frozen = getattr(trial, "_cached_frozen_trial", None)
        attrs = frozen.system_attrs if frozen is not None else storage.get_trial_system_attrs(trial._trial_id)
        history = list(attrs.get("retry_history", []))
    retry_of = history[-1] if history else None
    workload = spec.workload
    if "seed" in params and spec.kind == "lr_sweep":
        # A sweep's seed axis: the workload's seed, moved per run (data split, init, shuffle).
        workload = workload.model_copy(update={"seed": workload.seed + int(params.pop("seed"))})
    lease = Lease(
        trial_id=trial._trial_id,
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


class Held(NamedTuple):
    """A trial's lease, locked for this transaction, its study, and the database's clock."""

    lease: Lease
    record: StudyRecord
    now: datetime


def _current_lease(session: Session, team: Team, trial_id: int, lease_id: str) -> Held:
    return checked_lease(study_rows.lock_lease(session, trial_id), team, trial_id, lease_id)


def checked_lease(
    found: tuple[Lease, StudyRecord | None, datetime] | None, team: Team, trial_id: int, lease_id: str
) -> Held:
    """The lease as study_rows.lock_lease found it, if it is `lease_id` and the team's; else the
    error the caller gets (Gone, NotFound, LeaseLost)."""
    lease, record, now = found if found is not None else (None, None, None)
    if lease is not None and lease.study_id is None and lease.team_id in (team.id, None):
        # None: a tombstone from before leases recorded their team.
        raise Gone(f"trial {trial_id}'s study was deleted; drop the trial and claim other work")
    if lease is None or record is None or record.team_id != team.id:
        raise NotFound(f"no trial with id {trial_id}")
    if lease.lease_id != lease_id:
        raise LeaseLost(f"lease {lease_id} is not the current lease of trial {trial_id}")
    return Held(lease, record, now)


def _extend(session: Session, held: Held, settings: Settings, *, unless_fresh: bool = False) -> None:
    """Optuna's heartbeat decides staleness (the reaper); expires_at shows the lease's horizon.

    unless_fresh (reports): a lease extended less than half a heartbeat interval ago is left as
    it is. Fast epochs report many times per heartbeat; the worker's heartbeat thread keeps the
    lease anyway."""
    if unless_fresh and is_fresh(held, settings):
        return
    # Optuna's heartbeat row, written in this transaction (optuna_rows).
    optuna_rows.record_heartbeat(session.connection(), held.lease.trial_id)
    held.lease.expires_at = held.now + timedelta(seconds=settings.lease_seconds)


def is_fresh(held: Held, settings: Settings) -> bool:
    """Whether the lease was extended less than half a heartbeat interval ago."""
    lease_length = timedelta(seconds=settings.lease_seconds)
    return held.lease.expires_at - held.now > lease_length - timedelta(seconds=settings.heartbeat_seconds / 2)


def _live_lease(session: Session, team: Team, trial_id: int, lease_id: str) -> Held:
    return live(_current_lease(session, team, trial_id, lease_id))


def live(held: Held) -> Held:
    """The lease, unless its trial has ended (LeaseLost)."""
    trial_id = held.lease.trial_id
    if held.lease.ended_at is not None:
        raise LeaseLost(f"trial {trial_id} already ended ({held.lease.outcome}); its lease is no longer valid")
    return held


def heartbeat(session: Session, team: Team, trial_id: int, lease_id: str, settings: Settings) -> Lease:
    held = _live_lease(session, team, trial_id, lease_id)
    _extend(session, held, settings)
    return held.lease


def report(
    session: Session,
    storage: BaseStorage,
    team: Team,
    trial_id: int,
    lease_id: str,
    step: int,
    value: float,
    settings: Settings,
) -> bool:
    """Record an intermediate value and answer whether the trial should stop.

    Reporting the same step twice keeps the first value (Optuna ignores the repeat)."""
    return report_on(session, storage, _live_lease(session, team, trial_id, lease_id), step, value, settings)


def report_on(session: Session, storage: BaseStorage, held: Held, step: int, value: float, settings: Settings) -> bool:
    """report, on a lease this transaction has locked and checked already (live)."""
    record, trial_id = held.record, held.lease.trial_id
    spec = spec_of(record)
    pruner = build_pruner(spec)
    with optuna_errors():
        study_id = coordination.optuna_study_id(storage, record.id, record.optuna_name)
        if not coordination.judged_flat(pruner):
            # Optuna's own pruner reads the study through the storage: the value is committed
            # there first, as trial.report does, and before this transaction touches the trial
            # (its heartbeat, in _extend), which would leave the storage's write waiting on us.
            optuna_pruning.report_committed(storage, trial_id, step, value)
            prune = record.stopped or optuna_pruning.should_prune(storage, study_id, pruner, trial_id)
            _extend(session, held, settings, unless_fresh=True)
            return prune
    _extend(session, held, settings, unless_fresh=True)
    with optuna_errors():
        # The value goes into Optuna's table and the pruner reads the flat path's view, all on
        # this transaction's connection, in two or three statements (coordination.record_value):
        # no optuna.Study or Trial, whose construction reads the study (and a sampler, every trial).
        curve, at_step = coordination.record_value(session.connection(), storage, study_id, trial_id, step, value)
        if record.stopped:
            return True  # a stopped study lets its running trials go at their next report
        direction = optuna.study.StudyDirection.MAXIMIZE if spec.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
        return coordination.should_prune(storage, study_id, pruner, direction, trial_id, curve, at_step)


def checkpoint(
    session: Session,
    storage: BaseStorage,
    store: checkpoints.ArtifactStore,
    team: Team,
    trial_id: int,
    lease_id: str,
    step: int,
    value: float,
    data: BinaryIO,
    size: int,
    settings: Settings,
) -> bool:
    """A report and the checkpoint taken at the same step, in one call: a retry that resumes
    from step N has the values of steps 1..N and reports from N+1, so none is lost or doubled."""
    held = _live_lease(session, team, trial_id, lease_id)
    prune = report_on(session, storage, held, step, value, settings)
    checkpoints.save(session, store, held.lease, step, data, size)
    return prune


def check_live_lease(session: Session, team: Team, trial_id: int, lease_id: str) -> None:
    """The errors a call on this lease would get (NotFound, Gone, LeaseLost), before the call
    does anything costly, such as reading a checkpoint's body."""
    _live_lease(session, team, trial_id, lease_id)


def resume_checkpoint(
    session: Session, storage: BaseStorage, store: checkpoints.ArtifactStore, team: Team, trial_id: int, lease_id: str
) -> tuple[int, bytes] | None:
    record = _live_lease(session, team, trial_id, lease_id).record
    return checkpoints.load(session, storage, store, record, trial_id)


def finish(
    session: Session,
    storage: BaseStorage,
    team: Team,
    trial_id: int,
    lease_id: str,
    state: FinishState,
    value: float | None,
    error: str | None,
    reason: str | None = None,
    metrics: dict[str, float] | None = None,
) -> str:
    lease, record, now = _current_lease(session, team, trial_id, lease_id)
    if lease.ended_at is not None:
        if lease.outcome == state:
            return state  # a repeated finish (a retry after a lost response) is harmless
        raise LeaseLost(f"trial {trial_id} already ended as {lease.outcome}, not {state}")
    if state == "complete" and (value is None or not math.isfinite(value)) and not spec_of(record).objectives:
        # (Several objectives: the value is one of them at most; _end checks them all.)
        raise InvalidRequest("value: a complete trial needs a finite objective value")
    state = _end(session, storage, record, lease, state, value, error, reason, metrics, now=now)
    if state == "failed" and reason == "interrupted":
        # The worker was shut down, not the trial broken: it resumes elsewhere, like a lost one.
        retry_lost_trial(storage, record, trial_id)
    count_finished(state)
    return state


def _end(
    session: Session,
    storage: BaseStorage,
    record: StudyRecord,
    lease: Lease,
    state: FinishState,
    value: float | None,
    error: str | None,
    reason: str | None = None,
    metrics: dict[str, float] | None = None,
    *,
    now: datetime | None = None,
) -> FinishState:
    """Ends the trial in Optuna and its lease; returns the state it ended in (a complete trial
    of a multi-objective study that lacks one of its objectives ends failed)."""
    conn = session.connection()
    with optuna_errors():
        # Someone may have finished it already (optuna-dashboard can "tell"); then only the
        # lease ends here, and Optuna's record stays as it is.
        found, intermediate = optuna_rows.state_and_curve(conn, lease.trial_id)
        if found is not None and not found.is_finished():
            spec = spec_of(record)
            # What study.tell does, without its two reads of the whole trial: the values it
            # would store, then the storage's state change. (tell also calls the sampler's
            # after_trial, which does nothing for the samplers the factories build:
            # tests/test_coordination.py.)
            if spec.objectives:
                values, missing = _told_objectives(spec, state, value, metrics)
                if missing is not None:
                    # A complete trial without all its objectives is no point of the front.
                    state, error = "failed", missing
            else:
                values = _told_values(state, value, intermediate)
            # User attributes, so optuna-dashboard shows why a trial ended and what its curve
            # says. Committed on their own before the state change: Optuna's cached storage keeps
            # a finished trial as it first read it, so attributes committed after the state (in
            # this transaction) were lost to a process that listed the trial in between. (Not on
            # this transaction's connection, which would then hold a lock on the trial's row
            # that the state change waits for: optuna_rows, lock order.)
            _set_attrs_now(storage, lease.trial_id, _end_attrs(spec, intermediate, error, reason, metrics), _constraints(spec, state, metrics))
            try:
                storage.set_trial_state_values(lease.trial_id, _OPTUNA_STATE[state], values)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # told in between (tell's skip_if_finished)
    lease.ended_at = now if now is not None else study_rows.now(session)
    lease.epochs = optuna_rows.lease_epochs()
    lease.outcome = state
    lease.error = error
    return state


def _set_attrs_now(storage: BaseStorage, trial_id: int, attrs: dict[str, Any], system: dict[str, Any]) -> None:
    engine = getattr(backend_of(storage), "engine", None)
    if engine is None:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system.items():
            storage.set_trial_system_attr(trial_id, key, value)
        return
    with engine.begin() as conn:
        optuna_rows.set_user_attrs(conn, trial_id, attrs)
        optuna_rows.set_system_attrs(conn, trial_id, system)


def _constraints(spec: StudySpec, state: FinishState, metrics: dict[str, float] | None) -> dict[str, float]:
    """Optuna's constraint values of a complete or pruned trial (Trial.set_constraint's keys)."""
    if not spec.constraints or state == "failed":
        return {}
    return {f"{CONSTRAINTS_KEY}:{key}": v for c in spec.constraints for key, v in c.violations(metrics or {}).items()}


def _told_objectives(
    spec: StudySpec, state: FinishState, value: float | None, metrics: dict[str, float] | None
) -> tuple[list[float] | None, str | None]:
    """A multi-objective study's values: each objective of a complete trial; none for a pruned
    or failed one (Optuna keeps no intermediate value as a value there)."""
    if state != "complete":
        return None, None
    assert spec.objectives is not None
    return objective_values(spec.objectives, value, metrics)


def _told_values(state: FinishState, value: float | None, intermediate: dict[int, float]) -> list[float] | None:
    """The values study.tell stores: the objective for a complete trial; for a pruned one, its
    last intermediate value unless that is NaN; none for a failed one."""
    if state == "complete":
        assert value is not None
        return [float(value)]
    if state == "pruned" and intermediate:
        last = intermediate[max(intermediate)]
        return None if math.isnan(last) else [float(last)]
    return None


def _end_attrs(
    spec: StudySpec, intermediate: dict[int, float], error: str | None, reason: str | None, metrics: dict[str, float] | None
) -> dict[str, Any]:
    """The user attributes a finished trial gets: error, reason, metrics and the curve's diagnosis."""
    attrs = {"error": error[:2000] if error else None, "reason": reason, "metrics": metrics or None}
    # The diagnosis reads curves as losses; a maximized objective is turned upside down.
    sign = -1.0 if spec.direction == "maximize" else 1.0
    curve = [sign * v for _, v in sorted(intermediate.items())]
    start = (metrics or {}).get("initial_val_loss")
    # An LR range test's curve runs over lrs, not epochs: the epoch diagnosis does not apply.
    attrs["diagnosis"] = None if spec.kind == "lr_finder" else diagnose(curve, reason=reason, start=None if start is None else sign * start)
    return {key: attr for key, attr in attrs.items() if attr is not None}
