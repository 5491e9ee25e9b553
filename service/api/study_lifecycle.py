"""A study's lifecycle after create: enqueue trials, update budgets, resume, clone. Every write is audited."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from service.api.deps import Manager, RuntimeDep
from service.api.schemas import CloneRequest, EnqueueRequest, EnqueueResponse, StudyCloned, StudyPatch, StudyPublic
from service.api.studies import audit_write
from service.engine import lifecycle, studies
from service.engine.summaries import StudySummary
from service.errors import InvalidRequest
from service.spec.limits import check_document
from service.spec.lint import lint

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])


@router.post("/{name}/trials", status_code=201, response_model=EnqueueResponse)
def enqueue_trials(name: str, body: EnqueueRequest, runtime: RuntimeDep, caller: Manager) -> dict[str, Any]:
    """Queue trials with given params (warm start from known-good configurations): claimed before
    sampled ones, checked against the space, counted in n_trials. Role: member or admin."""
    with runtime.transaction() as session:
        record = studies.get(session, caller.team, name, lock=True)
        numbers = lifecycle.enqueue(session, runtime.storage, runtime.state.views, record, [t.params for t in body.trials])
        audit_write(session, caller, "study.enqueue", record.name, optuna_name=record.optuna_name, numbers=numbers)
        return {"numbers": numbers}


@router.patch("/{name}", response_model=StudyPublic)
def update_study(name: str, patch: StudyPatch, runtime: RuntimeDep, caller: Manager) -> StudySummary:
    """Raise n_trials or the other budgets, change max_concurrent, stop or resume (`stopped:
    false`). The space, sampler, pruner and workload stay: clone the study to change them.
    Role: member or admin."""
    lifecycle.refuse_fixed_fields(name, patch.model_extra or {})
    budget = patch.budget.model_dump(mode="json", exclude_none=True) if patch.budget else None
    with runtime.transaction() as session:
        record = studies.get(session, caller.team, name, lock=True)
        before = {"budget": dict(record.spec.get("budget", {})), "stopped": record.stopped}
        lifecycle.update(session, runtime.storage, runtime.state.views, record, budget, patch.stopped)
        audit_write(session, caller, "study.update", record.name, optuna_name=record.optuna_name, before=before, change=patch.model_dump(mode="json", exclude_none=True, exclude=set(patch.model_extra or {})))
        session.flush()
        return studies.summary(session, runtime.storage, record)


@router.post("/{name}/clone", status_code=201, response_model=StudyCloned)
def clone_study(name: str, body: CloneRequest, runtime: RuntimeDep, caller: Manager) -> dict[str, Any]:
    """A new study from this one's definition with `changes`, optionally carrying over its
    complete and pruned trials (so TPE starts informed). Role: member or admin."""
    try:
        check_document(body.changes)  # the limits a posted definition gets (depth, text)
    except ValueError as exc:
        raise InvalidRequest(f"changes: {exc}") from exc
    with runtime.transaction() as session:
        record = studies.get(session, caller.team, name, lock=True)
        new, carried, left_out = lifecycle.clone(session, runtime.storage, caller.team, record, body.name, body.changes, body.carry_trials)
        audit_write(
            session, caller, "study.clone", new.name, optuna_name=new.optuna_name, source=record.name, carried=carried, left_out=left_out
        )
        summary = studies.summary(session, runtime.storage, new)
        return {**asdict(summary), "warnings": lint(studies.spec_of(new)), "carried": carried, "left_out": left_out}
