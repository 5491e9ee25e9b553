"""The audit trail: who did what to a team's studies and tokens. Callers own the transaction, so
an event is stored exactly when its action is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import AuditEvent

ACTIONS = ("study.create", "study.stop", "study.delete", "token.create", "token.revoke", "dashboard.login")


def record(
    session: Session,
    team_id: int,
    action: str,
    target: str,
    *,
    actor: str | None,
    role: str | None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an event to the caller's transaction. `actor` is the acting token's prefix (None for
    the server-host CLI)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    event = AuditEvent(team_id=team_id, actor=actor, role=role, action=action, target=target, detail=detail or {})
    session.add(event)
    session.flush()
    return event


def recent(session: Session, team_id: int, limit: int) -> Sequence[AuditEvent]:
    """The team's newest events first."""
    return session.scalars(
        select(AuditEvent).where(AuditEvent.team_id == team_id).order_by(AuditEvent.id.desc()).limit(limit)
    ).all()
