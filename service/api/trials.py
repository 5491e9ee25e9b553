"""The worker protocol: claim, report, heartbeat, finish (DESIGN.md, "Worker protocol")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from service.api.deps import RuntimeDep, TeamDep
from service.api.schemas import (
    ClaimRequest,
    FinishRequest,
    FinishResponse,
    HeartbeatResponse,
    LeaseRequest,
    ReportRequest,
    ReportResponse,
)
from service.engine import trials
from service.spec import Assignment

router = APIRouter(prefix="/api/v1/trials", tags=["worker protocol"])

_LEASE_LOST = {409: {"description": "the lease is not the trial's current lease; nothing changed"}}


@router.post(
    "/claim",
    response_model=Assignment,
    responses={200: {"description": "an assignment"}, 204: {"description": "no work right now"}},
)
def claim(body: ClaimRequest, runtime: RuntimeDep, team: TeamDep) -> Any:
    with runtime.transaction() as session:
        candidates = trials.claim_candidates(session, team, body.studies)
    # One transaction per study tried: row locks are never held on two studies at once,
    # so concurrent claims cannot deadlock whatever order they try studies in.
    for study_id in candidates:
        with runtime.transaction() as session:
            assignment = trials.try_claim(session, runtime.storage, study_id, body.worker_id, runtime.settings)
        if assignment is not None:
            return assignment
    return Response(status_code=204)


@router.post("/{trial_id}/report", response_model=ReportResponse, responses=_LEASE_LOST)
def report(trial_id: int, body: ReportRequest, runtime: RuntimeDep, team: TeamDep) -> dict[str, bool]:
    with runtime.transaction() as session:
        prune = trials.report(
            session, runtime.storage, team, trial_id, body.lease_id, body.step, body.value, runtime.settings
        )
    return {"prune": prune}


@router.post("/{trial_id}/heartbeat", response_model=HeartbeatResponse, responses=_LEASE_LOST)
def heartbeat(trial_id: int, body: LeaseRequest, runtime: RuntimeDep, team: TeamDep) -> dict[str, float]:
    with runtime.transaction() as session:
        trials.heartbeat(session, team, trial_id, body.lease_id, runtime.settings)
    return {"lease_seconds": runtime.settings.lease_seconds}


@router.post("/{trial_id}/finish", response_model=FinishResponse, responses=_LEASE_LOST)
def finish(trial_id: int, body: FinishRequest, runtime: RuntimeDep, team: TeamDep) -> dict[str, str]:
    with runtime.transaction() as session:
        state = trials.finish(
            session, runtime.storage, team, trial_id, body.lease_id, body.state, body.value, body.error,
            body.reason, body.metrics,
        )
    return {"state": state}
