"""The worker protocol: claim, report, heartbeat, finish (DESIGN.md, "Worker protocol")."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.api.deps import Bearer, RuntimeDep, WorkerBearer, WorkerCall, WorkerRole
from service.api.report_batcher import ReportBatcher
from service.api.schemas import (
    ClaimRequest,
    FinishRequest,
    FinishResponse,
    HeartbeatResponse,
    LeaseRequest,
    ReportRequest,
    ReportResponse,
)
from service.db.teams import Principal
from service.engine import trials
from service.engine.report_batch import PendingReport
from service.errors import InvalidRequest
from service.spec import Assignment

router = APIRouter(prefix="/api/v1/trials", tags=["worker protocol"])

_LEASE_LOST = {409: {"description": "the lease is not the trial's current lease; nothing changed"}}


@router.post(
    "/claim",
    response_model=Assignment,
    responses={200: {"description": "an assignment"}, 204: {"description": "no work right now"}},
)
async def claim(body: ClaimRequest, runtime: RuntimeDep, call: WorkerCall) -> Any:
    def work(caller: Principal, session: Session) -> Assignment | None:
        candidates = trials.claim_candidates(session, runtime.storage, caller.team, body.studies)
        # One transaction per study tried: row locks are never held on two studies at once,
        # so concurrent claims cannot deadlock whatever order they try studies in. (The first
        # is the one the candidates were read in, which locked nothing.)
        for study_id in candidates:
            assignment = trials.try_claim(session, runtime.storage, study_id, body.worker_id, runtime.settings)
            session.commit()
            if assignment is not None:
                return assignment
        return None

    assignment = await call.run(work)
    return Response(status_code=204) if assignment is None else assignment


_REPORT_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReportRequest"}}}}
}


@router.post("/{trial_id}/report", response_model=ReportResponse, responses=_LEASE_LOST, openapi_extra=_REPORT_BODY)
async def report(trial_id: int, request: Request, bearer: WorkerBearer) -> dict[str, bool]:
    """Record the step's value; `prune` says whether the trial should stop.

    Reports are committed in batches (service/api/report_batcher.py): the token is checked, and
    the value written, in the transaction of the batch the report joins."""
    body = await _report_body(request, bearer)
    reports: ReportBatcher = request.app.state.reports
    pending = PendingReport(bearer.token, trial_id, body.lease_id, body.step, body.value, authorize=bearer.authorize)
    return {"prune": await reports.submit(pending)}


async def _report_body(request: Request, bearer: Bearer) -> ReportRequest:
    """The body, read here rather than by FastAPI so that the token is checked with the report's
    batch; a bad body gets its 422 only after the token has been checked alone (401, 403)."""
    raw = await request.body()
    try:
        return ReportRequest.model_validate(json.loads(raw or b"null"))
    except ValueError as exc:  # pydantic's ValidationError is one
        await bearer.check()
        if isinstance(exc, ValidationError):
            raise
        raise InvalidRequest(f"body: not valid JSON: {exc}") from exc


@router.post("/{trial_id}/heartbeat", response_model=HeartbeatResponse, responses=_LEASE_LOST)
async def heartbeat(trial_id: int, body: LeaseRequest, runtime: RuntimeDep, call: WorkerCall) -> dict[str, float]:
    def work(caller: Principal, session: Session) -> None:
        trials.heartbeat(session, caller.team, trial_id, body.lease_id, runtime.settings)

    await call.run(work)
    return {"lease_seconds": runtime.settings.lease_seconds}


@router.post("/{trial_id}/finish", response_model=FinishResponse, responses=_LEASE_LOST)
async def finish(trial_id: int, body: FinishRequest, runtime: RuntimeDep, call: WorkerCall) -> dict[str, str]:
    def work(caller: Principal, session: Session) -> str:
        return trials.finish(
            session, runtime.storage, caller.team, trial_id, body.lease_id, body.state, body.value, body.error,
            body.reason, body.metrics,
        )

    return {"state": await call.run(work)}


_CHECKPOINT_BODY = {
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


@router.post("/{trial_id}/checkpoint", response_model=ReportResponse, responses=_LEASE_LOST, openapi_extra=_CHECKPOINT_BODY)
async def checkpoint(
    trial_id: int,
    request: Request,
    runtime: RuntimeDep,
    caller: WorkerRole,
    lease_id: Annotated[str, Query(min_length=1, max_length=36)],
    step: Annotated[int, Query(ge=0)],
    value: Annotated[float, Query(allow_inf_nan=False)],
) -> dict[str, bool]:
    """Report the step's value and store the checkpoint taken at that step, in one call.

    The body is the checkpoint's bytes; a retried trial fetches it back with GET."""
    data = await request.body()

    def _save() -> bool:
        with runtime.transaction() as session:
            return trials.checkpoint(
                session, runtime.storage, runtime.store, caller.team, trial_id, lease_id, step, value, data, runtime.settings
            )

    return {"prune": await run_in_threadpool(_save)}


@router.get(
    "/{trial_id}/checkpoint",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the checkpoint; its step in X-HPO-Step"},
        204: {"description": "no checkpoint up this trial's lineage"},
        **_LEASE_LOST,
    },
)
def resume_checkpoint(
    trial_id: int, runtime: RuntimeDep, caller: WorkerRole, lease_id: Annotated[str, Query(min_length=1, max_length=36)]
) -> Response:
    """The checkpoint a retried trial resumes from: the latest one up its lineage."""
    with runtime.transaction() as session:
        found = trials.resume_checkpoint(session, runtime.storage, runtime.store, caller.team, trial_id, lease_id)
    if found is None:
        return Response(status_code=204)
    step, data = found
    return Response(content=data, media_type="application/octet-stream", headers={"X-HPO-Step": str(step)})
