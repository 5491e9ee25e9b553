"""Login sessions of the built-in optuna-dashboard.

A session id is 32 random bytes, sent only in the cookie; the table keeps its SHA-256 and the
token that opened it. Every request re-checks that token (revoked, expired, role), so a session
never outlives the token's right to read the team's studies.

A login costs the team's audit trail and this table at most a bounded amount, however often a
token logs in: one `dashboard.login` event per token per LOGIN_EVENT_WINDOW (later logins in the
window add to its detail.count and detail.last_at), and at most SESSIONS_PER_TOKEN live sessions
per token (a new login ends the token's oldest beyond that). So a viewer cannot push other
events out of the trail's first page, nor grow the table, by logging in in a loop."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.db import audit
from service.db.models import AuditEvent, DashboardSession, Token
from service.db.teams import Principal, authenticate, hash_token
from service.errors import Forbidden

# Roles that may open the dashboard: it is for people, not for workers.
DASHBOARD_ROLES = ("viewer", "member", "admin")
# A person has a few browsers, not dozens.
SESSIONS_PER_TOKEN = 10
LOGIN_EVENT_WINDOW = timedelta(hours=1)


def login(session: Session, token: str, ttl_seconds: float) -> tuple[str, Principal]:
    """A new session for this token: (the session id for the cookie, the caller).

    Unauthorized for an unknown, revoked or expired token; Forbidden for a worker token."""
    caller = authenticate(session, token)
    if caller.role not in DASHBOARD_ROLES:
        raise Forbidden(f"the dashboard needs role viewer, member or admin; this token is {caller.role}")
    # Logins of one token take turns, so the session cap and the one event per window hold
    # under concurrent logins too.
    session.execute(select(Token.id).where(Token.id == caller.token_id).with_for_update(key_share=True))
    # Sessions that ran out are removed here, so the table does not grow without bound.
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= func.now()))
    keep = (
        select(DashboardSession.id_hash)
        .where(DashboardSession.token_id == caller.token_id)
        .order_by(DashboardSession.created_at.desc(), DashboardSession.expires_at.desc())
        .limit(SESSIONS_PER_TOKEN - 1)
    )
    session.execute(
        delete(DashboardSession).where(DashboardSession.token_id == caller.token_id, DashboardSession.id_hash.not_in(keep))
    )
    raw = secrets.token_urlsafe(32)
    session.add(
        DashboardSession(
            id_hash=hash_token(raw),
            token_id=caller.token_id,
            expires_at=func.now() + timedelta(seconds=ttl_seconds),
        )
    )
    _note_login(session, caller)
    return raw, caller


def _note_login(session: Session, caller: Principal) -> None:
    now = session.scalar(select(func.now()))
    recent = session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.team_id == caller.team.id,
            AuditEvent.action == "dashboard.login",
            AuditEvent.target == caller.prefix,
            AuditEvent.at > now - LOGIN_EVENT_WINDOW,
        )
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).first()
    if recent is None:
        detail = {"count": 1, "last_at": now.isoformat(), "window_seconds": int(LOGIN_EVENT_WINDOW.total_seconds())}
        audit.record(session, caller.team.id, "dashboard.login", caller.prefix, actor=caller.prefix, role=caller.role, detail=detail)
    else:
        # A new dict: the JSONB column notices assignment, not mutation in place.
        recent.detail = {**recent.detail, "count": int(recent.detail.get("count", 1)) + 1, "last_at": now.isoformat()}


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
