"""Login sessions of the built-in optuna-dashboard.

A session id is 32 random bytes, sent only in the cookie; the table keeps its SHA-256 and the
token that opened it. Every request re-checks that token (revoked, expired, role), so a session
never outlives the token's right to read the team's studies."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.db import audit
from service.db.models import DashboardSession, Token
from service.db.teams import Principal, authenticate, hash_token
from service.errors import Forbidden

# Roles that may open the dashboard: it is for people, not for workers.
DASHBOARD_ROLES = ("viewer", "member", "admin")


def login(session: Session, token: str, ttl_seconds: float) -> tuple[str, Principal]:
    """A new session for this token: (the session id for the cookie, the caller).

    Unauthorized for an unknown, revoked or expired token; Forbidden for a worker token."""
    caller = authenticate(session, token)
    if caller.role not in DASHBOARD_ROLES:
        raise Forbidden(f"the dashboard needs role viewer, member or admin; this token is {caller.role}")
    # Sessions that ran out are removed here, so the table does not grow without bound.
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= func.now()))
    raw = secrets.token_urlsafe(32)
    session.add(
        DashboardSession(
            id_hash=hash_token(raw),
            token_id=caller.token_id,
            expires_at=func.now() + timedelta(seconds=ttl_seconds),
        )
    )
    audit.record(session, caller.team.id, "dashboard.login", caller.prefix, actor=caller.prefix, role=caller.role)
    return raw, caller


def principal(session: Session, raw: str) -> Principal | None:
    """The caller behind a session id, or None when the session is unknown, has expired, or its
    token no longer works."""
    row = session.execute(
        select(Token)
        .join(DashboardSession, DashboardSession.token_id == Token.id)
        .where(
            DashboardSession.id_hash == hash_token(raw),
            DashboardSession.expires_at > func.now(),
            Token.revoked_at.is_(None),
            (Token.expires_at.is_(None)) | (Token.expires_at > func.now()),
            Token.role.in_(DASHBOARD_ROLES),
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    return Principal(team=row.team, token_id=row.id, prefix=row.prefix, role=row.role)


def logout(session: Session, raw: str) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.id_hash == hash_token(raw)))
