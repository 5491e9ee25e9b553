"""The team's tokens and audit trail, for its admins."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from service.api.deps import Admin, RuntimeDep
from service.api.schemas import AuditPublic, TokenCreate, TokenCreated, TokensPublic
from service.db import audit
from service.db.models import Token
from service.db.teams import db_now, is_active, issue_token, list_tokens, revoke

router = APIRouter(tags=["tokens and audit"])


def public(token: Token, now: datetime) -> dict[str, Any]:
    return {
        "prefix": token.prefix,
        "role": token.role,
        "name": token.name,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
        "revoked_at": token.revoked_at,
        "active": is_active(token, now),
    }


@router.post("/api/v1/tokens", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, runtime: RuntimeDep, caller: Admin, response: Response) -> dict[str, Any]:
    """A new token for the team, shown once in this answer (only its SHA-256 is kept). Role: admin."""
    response.headers["Cache-Control"] = "no-store"
    with runtime.transaction() as session:
        now = db_now(session)
        expires_at = body.expires_at
        if body.expires_in_days is not None:
            expires_at = now + timedelta(days=body.expires_in_days)
        token, row = issue_token(session, caller.team, body.role, name=body.name, expires_at=expires_at, actor=caller)
        return {**public(row, now), "token": token, "team": caller.team.name}


@router.get("/api/v1/tokens", response_model=TokensPublic)
def get_tokens(runtime: RuntimeDep, caller: Admin) -> dict[str, Any]:
    """The team's tokens, revoked and expired ones included; never the tokens or their hashes. Role: admin."""
    with runtime.transaction() as session:
        now = db_now(session)
        return {"team": caller.team.name, "tokens": [public(t, now) for t in list_tokens(session, caller.team.id)]}


@router.delete(
    "/api/v1/tokens/{prefix}",
    status_code=204,
    response_class=Response,
    responses={404: {"description": "no such token in the team"}, 409: {"description": "the team's last active admin token"}},
)
def revoke_token(prefix: str, runtime: RuntimeDep, caller: Admin) -> Response:
    """Revoke a token: it answers 401 from now on. Revoking it again changes nothing; the team's
    last active admin token cannot be revoked (409). Role: admin."""
    with runtime.transaction() as session:
        revoke(session, caller.team.id, prefix, actor=caller)
    return Response(status_code=204)


@router.get("/api/v1/audit", response_model=AuditPublic)
def get_audit(
    runtime: RuntimeDep,
    caller: Admin,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many events")] = 100,
    before_id: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="only events older than this id: the `next_before_id` of the previous page")
    ] = None,
) -> dict[str, Any]:
    """The team's audit trail, newest first, a page at a time: follow `next_before_id` until it
    is null to read it all. Role: admin."""
    with runtime.transaction() as session:
        events, next_before_id = audit.page(session, caller.team.id, limit, before_id)
        return {
            "events": [
                {"id": e.id, "at": e.at, "actor": e.actor, "role": e.role, "action": e.action, "target": e.target, "detail": e.detail}
                for e in events
            ],
            "next_before_id": next_before_id,
        }
