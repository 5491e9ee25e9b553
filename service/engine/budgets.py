"""Compute budgets besides n_trials: epochs (`budget.max_epochs`), trial wall time
(`budget.max_seconds`) and a deadline (`budget.until`), counted from our leases.

A lease records the intermediate values it inherited (a retry starts with its lost predecessor's
curve) and, when it ends, the epochs it reported itself; so the epochs used are the ended
leases' plus what the running ones have reported, retries' own epochs included and inherited ones
not counted twice. A claim is refused once the epochs reported plus those the running trials may
still train (each up to the workload's `epochs`) reach max_epochs: no trial is cut short, and since
pruned trials give back what they did not train, the study ends with at least max_epochs used.
The seconds are each lease's claim to end (to now while it runs): claims stop once they reach
max_seconds, and running trials finish. Once a compute budget runs out nothing more is handed out,
queued retries included: they would be new compute."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import StudyRecord
from service.engine.optuna_adapter import rows as optuna_rows
from service.spec import StudySpec

COMPUTE = ("max_epochs", "max_seconds", "until")


def has_compute_budget(spec: StudySpec) -> bool:
    return any(getattr(spec.budget, name) is not None for name in COMPUTE)


def _projected_epochs(spec: StudySpec, usage: study_rows.LeaseUsage) -> int:
    return usage.ended_epochs + max(0, usage.running * spec.workload.epochs - usage.running_inherited)


def exhausted(session: Session, record: StudyRecord, spec: StudySpec) -> str | None:
    """The compute budget that has run out (no more claims), if one has."""
    if not has_compute_budget(spec):
        return None
    return _exhausted(spec, study_rows.lease_usage(session, record.id))


def _exhausted(spec: StudySpec, usage: study_rows.LeaseUsage) -> str | None:
    b = spec.budget
    if b.max_epochs is not None and _projected_epochs(spec, usage) >= b.max_epochs:
        return "max_epochs"
    if b.max_seconds is not None and usage.seconds >= b.max_seconds:
        return "max_seconds"
    if b.until is not None and usage.now >= b.until:
        return "until"
    return None


def view(session: Session, record: StudyRecord, spec: StudySpec, started: int) -> dict[str, Any]:
    """Each budget's limit, use and what is left, the one that binds (the least left, as a share
    of its limit; or the one that ran out), and whether one has."""
    b = spec.budget
    out: dict[str, Any] = {"n_trials": {"limit": b.n_trials, "used": started, "left": max(0, b.n_trials - started)}}
    shares = {"n_trials": out["n_trials"]["left"] / b.n_trials}
    spent = "n_trials" if started >= b.n_trials else None
    if has_compute_budget(spec):
        usage = study_rows.lease_usage(session, record.id)
        spent = _exhausted(spec, usage) or spent
        if b.max_epochs is not None:
            used = usage.ended_epochs + optuna_rows.running_epochs(session.connection(), record.id)
            projected = _projected_epochs(spec, usage)
            left = max(0, b.max_epochs - projected)
            out["max_epochs"] = {"limit": b.max_epochs, "used": used, "in_flight": max(0, projected - used), "left": left}
            shares["max_epochs"] = left / b.max_epochs
        if b.max_seconds is not None:
            left_s = max(0.0, b.max_seconds - usage.seconds)
            out["max_seconds"] = {"limit": b.max_seconds, "used": round(usage.seconds, 3), "left": round(left_s, 3)}
            shares["max_seconds"] = left_s / b.max_seconds
        if b.until is not None:
            out["until"] = {"at": b.until.isoformat(), "left_seconds": round(max(0.0, (b.until - usage.now).total_seconds()), 3)}
    out["binding"] = spent or min(shares, key=lambda name: shares[name])
    out["exhausted"] = spent
    return out
