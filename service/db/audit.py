"""The audit trail: who did what to a team's studies and tokens. Callers own the transaction, so
an event is stored exactly when its action is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import AuditEvent

ACTIONS = (
    "study.create",
    "study.stop",
    "study.enqueue",
    "study.update",  # budgets raised, stopped or resumed (PATCH)
    "study.clone",  # the target is the new study; detail.source the one cloned
    "study.import",  # trials copied in from an Optuna SQLite file or another Optuna study
    "study.delete",  # through REST, or the dashboard (detail.via = "dashboard")
    "token.create",
    "token.revoke",
    # One event per token per window (service/db/dashboard_sessions.py): detail.count logins since `at`.
    "dashboard.login",
    # optuna-dashboard's writes (service/api/dashboard_routes.py); the target is the study.
    "dashboard.tell",
    "dashboard.user_attrs",
    "dashboard.study_note",
    "dashboard.trial_note",
    "dashboard.preference",
    "dashboard.preference_remove",
    "dashboard.preference_restore",
    "dashboard.feedback_component",
    "dashboard.skip",
)


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


def page(session: Session, team_id: int, limit: int, before_id: int | None = None) -> tuple[Sequence[AuditEvent], int | None]:
    """The team's events newest first, at most `limit` of them with ids below `before_id`, and
    the before_id of the next (older) page, None when this is the last. Ids only grow, so a
    page boundary never skips or repeats an event, however many are added meanwhile."""
    query = select(AuditEvent).where(AuditEvent.team_id == team_id)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    events = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1)).all()
    if len(events) > limit:
        return events[:limit], events[limit - 1].id
    return events, None
