"""The worker protocol: claim, report, heartbeat, finish (DESIGN.md, "Worker protocol")."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service import metrics
from service.api.deps import Bearer, RuntimeDep, WorkerBearer, WorkerCall, WorkerRole
from service.api.report_batcher import PendingReport, ReportBatcher
from service.api.schemas import (
    MAX_STEP,
    ClaimGroupRequest,
    ClaimRequest,
    FinishRequest,
    FinishResponse,
    GroupAssignment,
    HeartbeatResponse,
    LeaseRequest,
    ReportRequest,
    ReportResponse,
    Text,
)
from service.db.teams import Principal
from service.engine import group_claims, leases, reports, team_claims, trials
from service.errors import InvalidRequest, LeaseLost
from service.spec import Assignment
from service.spec.limits import MAX_DEPTH

T = TypeVar("T")

router = APIRouter(prefix="/api/v1/trials", tags=["worker protocol"])

_LEASE_LOST = {409: {"description": "the lease is not the trial's current lease; nothing changed"}}


@router.post(
    "/claim",
    response_model=Assignment,
    responses={200: {"description": "an assignment"}, 204: {"description": "no work right now"}},
)
async def claim(body: ClaimRequest, runtime: RuntimeDep, call: WorkerCall) -> Any:
    def work(caller: Principal, session: Session) -> Assignment | None:
        studies = team_claims.candidates(session, runtime.storage, caller.team, body.studies)
        return team_claims.claim_any(session, runtime.storage, runtime.state, studies, body.worker_id, runtime.settings)

    assignment = await call.run(work)
    metrics.CLAIMS.labels(outcome="no_work" if assignment is None else "assigned").inc()
    return Response(status_code=204) if assignment is None else assignment


@router.post(
    "/claim-group",
    response_model=GroupAssignment,
    responses={200: {"description": "one to max_trials assignments of one study"}, 204: {"description": "no work right now"}, **_LEASE_LOST},
)
async def claim_group(body: ClaimGroupRequest, runtime: RuntimeDep, call: WorkerCall) -> Any:
    """Up to `max_trials` trials that train fused, as one batched model (README, "Fused trials"):
    they share the shape params; `alone` says why a single trial cannot be fused."""

    def work(caller: Principal, session: Session) -> group_claims.Group | None:
        args = (session, runtime.storage, runtime.state, caller.team)
        if body.like is not None:
            like = (body.like.trial_id, body.like.lease_id)
            return group_claims.refill(*args, like, body.worker_id, runtime.settings, body.max_trials)
        return group_claims.claim_group(*args, body.studies, body.worker_id, runtime.settings, body.max_trials)

    group = await call.run(work)
    if group is None:
        metrics.CLAIMS.labels(outcome="no_work").inc()
        return Response(status_code=204)
    metrics.CLAIMS.labels(outcome="assigned").inc(len(group.assignments))
    return GroupAssignment(assignments=group.assignments, alone=group.alone)


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
    except (ValueError, RecursionError) as exc:  # pydantic's ValidationError is a ValueError
        await bearer.check()
        if isinstance(exc, ValidationError):
            raise
        why = f"nested more than {MAX_DEPTH} levels deep" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidRequest(f"body: not valid JSON: {why}") from exc


@router.post("/{trial_id}/heartbeat", response_model=HeartbeatResponse, responses=_LEASE_LOST)
async def heartbeat(trial_id: int, body: LeaseRequest, runtime: RuntimeDep, call: WorkerCall) -> dict[str, float]:
    def work(caller: Principal, session: Session) -> None:
        leases.heartbeat(session, caller.team, trial_id, body.lease_id, runtime.settings)

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


_SPOOL_IN_MEMORY = 1024 * 1024
# The checkpoint routes' lease: in a header, so that it stays out of access logs (the review's
# finding 16); the query parameter is still taken from older workers.
LeaseHeader = Annotated[Text | None, Header(alias="X-HPO-Lease", min_length=1, max_length=36, description="the trial's lease id")]
LeaseQuery = Annotated[Text | None, Query(min_length=1, max_length=36, description="the lease id, if not in X-HPO-Lease")]


async def _lease(lease_id: LeaseQuery = None, x_hpo_lease: LeaseHeader = None) -> str | None:
    return x_hpo_lease or lease_id


CheckpointLease = Annotated[str | None, Depends(_lease)]


def _checked(call: Callable[[], T], lease: str | None) -> T:
    """call(), where a missing lease id is named as such: another team's trial is still 404
    first (nothing tells it exists), the caller's own is 422 rather than 'lease lost'."""
    try:
        return call()
    except LeaseLost:
        if lease is None:
            raise InvalidRequest("X-HPO-Lease: the trial's lease id is required (a header, or the lease_id query parameter)") from None
        raise
_CHECKPOINT_BODY = {
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


@router.post("/{trial_id}/checkpoint", response_model=ReportResponse, responses=_LEASE_LOST, openapi_extra=_CHECKPOINT_BODY)
async def checkpoint(
    trial_id: int,
    request: Request,
    runtime: RuntimeDep,
    caller: WorkerRole,
    step: Annotated[int, Query(ge=0, le=MAX_STEP)],
    value: Annotated[float, Query(allow_inf_nan=False)],
    lease_id: CheckpointLease,
) -> dict[str, bool]:
    """Report the step's value and store the checkpoint taken at that step, in one call.

    The body is the checkpoint's bytes; a retried trial fetches it back with GET. The lease is
    checked before the body is read, and the body goes to a spool file (in memory up to 1 MiB),
    not into memory whole: an upload to a trial that is not the caller's costs nothing, and
    concurrent large uploads cost the API no more memory than small ones."""

    def _check() -> None:
        with runtime.transaction() as session:
            _checked(lambda: leases.check_live_lease(session, caller.team, trial_id, lease_id or ""), lease_id)

    await run_in_threadpool(_check)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        size = 0
        async for chunk in request.stream():
            spool.write(chunk)
            size += len(chunk)
        spool.seek(0)

        def _save() -> bool:
            with runtime.transaction() as session:
                one = reports.Report(trial_id, lease_id or "", step, value)
                return reports.checkpoint(session, runtime.storage, runtime.state, runtime.store, caller.team, one, spool, size, runtime.settings)

        prune = await run_in_threadpool(_save)
        metrics.reported(prunes=int(prune))
        return {"prune": prune}


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
    trial_id: int, runtime: RuntimeDep, caller: WorkerRole, lease_id: CheckpointLease
) -> Response:
    """The checkpoint a retried trial resumes from: the latest one up its lineage."""
    with runtime.transaction() as session:
        found = _checked(lambda: trials.resume_checkpoint(session, runtime.storage, runtime.store, caller.team, trial_id, lease_id or ""), lease_id)
    if found is None:
        return Response(status_code=204)
    step, data = found
    return Response(content=data, media_type="application/octet-stream", headers={"X-HPO-Step": str(step)})
