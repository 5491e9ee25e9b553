"""GET /api/v1/queue: the team's trials that could be handed out now, for autoscalers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import RuntimeDep, WorkerRole
from service.api.schemas import QueuePublic
from service.engine import queue

router = APIRouter(prefix="/api/v1/queue", tags=["worker protocol"])


@router.get("", response_model=QueuePublic)
def get_queue(runtime: RuntimeDep, caller: WorkerRole) -> dict[str, Any]:
    """How many trials of the caller's team a worker could claim now, in all (`depth`) and per
    study: the trials left to start plus waiting retries, capped by `max_concurrent` headroom.
    Role: worker or admin, so a worker pool's autoscaler can read it with a worker token."""
    with runtime.transaction() as session:
        return queue.depth(session, runtime.storage, caller.team)
