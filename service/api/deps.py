"""Dependencies as Annotated aliases: the process-wide state, and the caller's team."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.storages import BaseStorage
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Team
from service.db.teams import team_for_token
from service.engine.checkpoints import ArtifactStore
from service.errors import Unauthorized
from service.settings import Settings


@dataclass
class Runtime:
    """What one API process holds: settings, our engine, Optuna's storage, the checkpoint store."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: BaseStorage
    store: ArtifactStore

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The request boundary: commit on success, roll back on any error."""
        with self.sessions.begin() as session:
            yield session


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

_bearer = HTTPBearer(auto_error=False, description="A team token: `Authorization: Bearer hpo_...`")


def get_team(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Team:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
    with runtime.transaction() as session:
        team = team_for_token(session, credentials.credentials)
    if team is None:
        raise Unauthorized("invalid token")
    return team


TeamDep = Annotated[Team, Depends(get_team)]
