"""Teams and their API tokens. Tokens are random, shown once, and stored only as a SHA-256."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service.db.models import Team, Token

TOKEN_PREFIX = "hpo_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_team(session: Session, name: str) -> Team:
    # ON CONFLICT keeps two concurrent bootstraps of the same team from failing.
    session.execute(insert(Team).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(Team).where(Team.name == name)).one()


def create_token(session: Session, team: Team) -> str:
    """Returns the plaintext token; only its hash is kept."""
    visible = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}{visible}_{secrets.token_urlsafe(32)}"
    session.add(Token(team_id=team.id, token_hash=hash_token(token), prefix=f"{TOKEN_PREFIX}{visible}"))
    session.flush()
    return token


def team_for_token(session: Session, token: str) -> Team | None:
    row = session.scalars(select(Token).where(Token.token_hash == hash_token(token))).one_or_none()
    return row.team if row else None
