"""A trial's end: finish (complete, pruned, failed) and what a retried trial resumes from.

Every function runs inside the caller's transaction, on the trial's lease, which it locks."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import Lease, StudyRecord, Team
from service.engine import checkpoints, leases
from service.engine.optuna_adapter import rows as optuna_rows
from service.engine.diagnosis import diagnose
from service.engine.reaper import retry_lost_trial
from service.engine.storage import CONSTRAINTS_KEY, database_engine, optuna_errors
from service.engine.studies import spec_of
from service.errors import InvalidRequest, LeaseLost
from service.metrics import finished as count_finished
from service.spec import FinishState, StudySpec
from service.spec.objectives import objective_values

_OPTUNA_STATE = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


def resume_checkpoint(
    session: Session, storage: BaseStorage, store: checkpoints.ArtifactStore, team: Team, trial_id: int, lease_id: str
) -> tuple[int, bytes] | None:
    record = leases.live_lease(session, team, trial_id, lease_id).record
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
    lease, record, now = leases.current(session, team, trial_id, lease_id)
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
    engine = database_engine(storage)
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
