"""Study routes, scoped to the caller's team."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import yaml
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.api.deps import Manager, Reader, RuntimeDep
from service.api.schemas import StudiesPublic, StudyCreated, StudyPublic, TrialsPublic
from service.db import audit
from service.db.teams import Principal
from service.engine import studies
from service.engine.summaries import StudySummary
from service.errors import InvalidRequest, UnsupportedMediaType
from service.spec import StudySpec
from service.spec.limits import MAX_DEPTH, check_document
from service.spec.lint import lint

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
_DEFINITION_SCHEMA = {"$ref": "#/components/schemas/StudySpec"}


def parse_definition(raw: bytes, content_type: str) -> StudySpec:
    """The same schema whether the definition arrives as JSON or YAML."""
    media = content_type.split(";")[0].strip().lower()
    kind = "YAML" if media in YAML_TYPES else "JSON"
    try:
        if media in YAML_TYPES:
            data: Any = yaml.safe_load(raw.decode("utf-8"))
        elif media in ("application/json", ""):
            data = json.loads(raw or b"null")
        else:
            raise UnsupportedMediaType(f"Content-Type must be application/json or application/yaml, not '{media}'")
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"body: not valid {kind}: {exc}") from exc
    except RecursionError as exc:
        # Both parsers recurse per level: JSON 100,000 deep, YAML 1,000 (the review's finding 4).
        raise InvalidRequest(f"body: the {kind} nests more than {MAX_DEPTH} levels deep") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("body: the study definition must be a mapping (a JSON object or a YAML mapping)")
    try:
        # Before pydantic, which recurses too; and no NUL or lone surrogate reaches PostgreSQL.
        check_document(data)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    return StudySpec.model_validate(data)


@router.post(
    "",
    status_code=201,
    response_model=StudyCreated,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _DEFINITION_SCHEMA}, "application/yaml": {"schema": _DEFINITION_SCHEMA}},
        }
    },
    responses={409: {"description": "a study with this name exists"}, 422: {"description": "invalid definition"}},
)
async def create_study(request: Request, runtime: RuntimeDep, caller: Manager) -> dict[str, Any]:
    """Create a study from a definition (JSON or YAML, same schema). Role: member or admin.

    The answer carries `warnings` for choices that are usually wrong (lr on a linear scale, ...)."""
    spec = parse_definition(await request.body(), request.headers.get("content-type", ""))
    warnings = lint(spec)

    def _create() -> dict[str, Any]:
        with runtime.transaction() as session:
            record = studies.create(session, runtime.storage, caller.team, spec)
            audit_write(session, caller, "study.create", record.name, optuna_name=record.optuna_name, n_trials=spec.budget.n_trials)
            return {**asdict(studies.summary(session, runtime.storage, record)), "warnings": warnings}

    return await run_in_threadpool(_create)


@router.get("", response_model=StudiesPublic)
def list_studies(runtime: RuntimeDep, caller: Reader) -> dict[str, Any]:
    """The team's studies. Role: viewer, member or admin."""
    with runtime.transaction() as session:
        records = studies.list_for_team(session, caller.team)
        return {"studies": [studies.summary_or_broken(session, runtime.storage, r) for r in records]}


@router.get("/{name}", response_model=StudyPublic)
def get_study(name: str, runtime: RuntimeDep, caller: Reader) -> StudySummary:
    """Counts by state and the best trial so far. Role: viewer, member or admin."""
    with runtime.transaction() as session:
        return studies.summary_or_broken(session, runtime.storage, studies.get(session, caller.team, name))


@router.get("/{name}/trials", response_model=TrialsPublic)
def list_trials(name: str, runtime: RuntimeDep, caller: Reader) -> dict[str, Any]:
    """Every trial of the study. Role: viewer, member or admin."""
    with runtime.transaction() as session:
        return {"trials": studies.trials(session, runtime.storage, studies.get(session, caller.team, name))}


@router.post("/{name}/stop", response_model=StudyPublic)
def stop_study(name: str, runtime: RuntimeDep, caller: Manager) -> StudySummary:
    """No more claims; running trials are told to prune at their next report. Role: member or admin."""
    with runtime.transaction() as session:
        record = studies.get(session, caller.team, name, lock=True)
        was_stopped = record.stopped
        studies.stop(session, record)
        audit_write(session, caller, "study.stop", record.name, optuna_name=record.optuna_name, was_stopped=was_stopped)
        session.flush()
        return studies.summary(session, runtime.storage, record)


@router.delete("/{name}", status_code=204, response_class=Response, responses={404: {"description": "no such study"}})
def delete_study(name: str, runtime: RuntimeDep, caller: Manager) -> Response:
    """Delete the study from Optuna and from ours. Role: member or admin."""
    with runtime.transaction() as session:
        record = studies.get(session, caller.team, name, lock=True)
        audit_write(session, caller, "study.delete", record.name, optuna_name=record.optuna_name)
        studies.delete(session, runtime.storage, record)
    return Response(status_code=204)


def audit_write(session: Any, caller: Principal, action: str, target: str, **detail: Any) -> None:
    """The audit event of a write to a study, by this caller."""
    audit.record(session, caller.team.id, action, target, actor=caller.prefix, role=caller.role, detail=detail)
