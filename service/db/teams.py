"""Teams and their API tokens. Tokens are random, shown once, and stored only as a SHA-256.

A token is `hpo_<8 hex>_<secret>`; `hpo_<8 hex>` is its prefix, the name it goes by in listings,
revocations and the audit trail. Each token has a role (models.ROLES), an optional name and
expiry, and once revoked it stays in the table (revoked_at) so the audit trail can still name it."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, any_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service.db import audit
from service.db.models import ROLES, StudyRecord, Team, Token
from service.db.studies import now as db_now
from service.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from service.spec import NAME_PATTERN, NAME_RULE

TOKEN_PREFIX = "hpo_"
# last_used_at is written at most this often per token, not on every request.
TOUCH_INTERVAL = timedelta(seconds=60)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_team(session: Session, name: str) -> Team:
    # fullmatch, not match: `$` in NAME_PATTERN also matches before a trailing newline.
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidRequest(f"team names are {NAME_RULE}; got {name!r}")
    # ON CONFLICT keeps two concurrent bootstraps of the same team from failing.
    session.execute(insert(Team).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(Team).where(Team.name == name)).one()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's team, prefix and role."""

    team: Team
    token_id: int
    prefix: str
    role: str


def lock_team(session: Session, team_id: int) -> None:
    """Token changes of one team serialize on its row (so two admins revoking each other
    cannot both succeed and leave the team without an admin)."""
    session.execute(select(Team.id).where(Team.id == team_id).with_for_update())


def issue_token(
    session: Session,
    team: Team,
    role: str = "admin",
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
    actor: Principal | None = None,
) -> tuple[str, Token]:
    """A new token: (the plaintext, shown once; its row, which keeps only the hash).

    Recorded in the audit trail in the same transaction; `actor` None is the server host."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    for _ in range(8):
        visible = secrets.token_hex(4)
        prefix = f"{TOKEN_PREFIX}{visible}"
        if session.scalars(select(Token.id).where(Token.prefix == prefix)).first() is None:
            break
    else:  # pragma: no cover - 8 collisions in a 32-bit space
        raise RuntimeError("could not find a free token prefix")
    token = f"{prefix}_{secrets.token_urlsafe(32)}"
    row = Token(team_id=team.id, token_hash=hash_token(token), prefix=prefix, role=role, name=name, expires_at=expires_at)
    session.add(row)
    session.flush()
    session.refresh(row)  # created_at comes from the database
    detail = {"role": role, "name": name, "expires_at": expires_at.isoformat() if expires_at else None}
    _audit(session, team.id, "token.create", prefix, actor, detail)
    return token, row


def create_token(
    session: Session, team: Team, role: str = "admin", *, name: str | None = None, expires_at: datetime | None = None
) -> str:
    """A new token made on the server host (`hpo token create`, `hpo up`, tests): the plaintext."""
    return issue_token(session, team, role, name=name, expires_at=expires_at)[0]


def authenticate(session: Session, token: str) -> Principal:
    """The caller behind a bearer token; Unauthorized for unknown, revoked or expired tokens.

    Notes the token's use, at most once per TOUCH_INTERVAL (one UPDATE a minute, not one per
    request). Times are the database's, like lease expiry."""
    found = authenticate_many(session, [token])[token]
    if isinstance(found, Unauthorized):
        raise found
    return found


def authenticate_many(session: Session, tokens: Sequence[str]) -> dict[str, Principal | Unauthorized]:
    """authenticate for several tokens in one read (and at most one touch): each token's caller,
    or the Unauthorized it gets."""
    wanted = {hash_token(token): token for token in tokens}
    hashes = bindparam("hashes", list(wanted), type_=ARRAY(String))
    rows = session.execute(select(Token, func.now()).where(Token.token_hash == any_(hashes))).all()
    found: dict[str, Principal | Unauthorized] = {token: Unauthorized("invalid token") for token in tokens}
    touch = []
    for row, now in rows:
        token = wanted[row.token_hash]
        if row.revoked_at is not None:
            found[token] = Unauthorized(f"token {row.prefix} was revoked at {row.revoked_at.isoformat()}")
        elif row.expires_at is not None and row.expires_at <= now:
            found[token] = Unauthorized(f"token {row.prefix} expired at {row.expires_at.isoformat()}")
        else:
            found[token] = Principal(team=row.team, token_id=row.id, prefix=row.prefix, role=row.role)
            if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL:
                touch.append(row.id)
    if touch:
        now = rows[0][1]
        # The WHERE makes concurrent requests of the same token write once between them.
        session.execute(
            update(Token)
            .where(Token.id == any_(bindparam("ids", touch, type_=ARRAY(Integer))), or_(Token.last_used_at.is_(None), Token.last_used_at <= now - TOUCH_INTERVAL))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
    return found


def list_tokens(session: Session, team_id: int) -> Sequence[Token]:
    return session.scalars(select(Token).where(Token.team_id == team_id).order_by(Token.created_at, Token.id)).all()


def get_token(session: Session, team_id: int, prefix: str, *, lock: bool = False) -> Token | None:
    query = select(Token).where(Token.team_id == team_id, Token.prefix == prefix)
    if lock:
        query = query.with_for_update(of=Token)
    return session.scalars(query).one_or_none()


def is_active(token: Token, now: datetime) -> bool:
    return token.revoked_at is None and (token.expires_at is None or token.expires_at > now)


def other_active_admins(session: Session, token: Token) -> int:
    """How many of the team's admin tokens, besides this one, still work."""
    now = func.now()
    return session.scalar(
        select(func.count()).where(
            Token.team_id == token.team_id,
            Token.id != token.id,
            Token.role == "admin",
            Token.revoked_at.is_(None),
            or_(Token.expires_at.is_(None), Token.expires_at > now),
        )
    ) or 0


def revoke(session: Session, team_id: int, prefix: str, *, actor: Principal | None = None) -> Token:
    """Revoke the team's token with this prefix, and record that in the audit trail.

    Revoking a revoked token changes nothing. The team's last working admin token cannot be
    revoked (Conflict): the team would have no one left to manage its tokens."""
    lock_team(session, team_id)
    token = get_token(session, team_id, prefix, lock=True)
    if token is None:
        # Another team's token is indistinguishable from a missing one.
        raise NotFound(f"no token with prefix '{prefix}'")
    if token.revoked_at is not None:
        return token
    now = db_now(session)
    if token.role == "admin" and is_active(token, now) and other_active_admins(session, token) == 0:
        raise Conflict(
            f"token {prefix} is the team's last active admin token; create another admin token before revoking it"
        )
    token.revoked_at = now
    session.flush()
    _audit(session, team_id, "token.revoke", prefix, actor, {"role": token.role, "name": token.name})
    return token


def _audit(session: Session, team_id: int, action: str, prefix: str, actor: Principal | None, detail: dict[str, Any]) -> None:
    if actor is None:
        detail = {**detail, "via": "server"}
    audit.record(
        session,
        team_id,
        action,
        prefix,
        actor=actor.prefix if actor else None,
        role=actor.role if actor else None,
        detail=detail,
    )


def teams_with_studies(session: Session) -> Sequence[Team]:
    """Every team that has a study, in name order (the metrics' per-team gauges)."""
    has_study = select(StudyRecord.id).where(StudyRecord.team_id == Team.id).exists()
    return session.scalars(select(Team).where(has_study).order_by(Team.name)).all()
