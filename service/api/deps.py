"""Dependencies as Annotated aliases: the process-wide state, and the caller (team and role).

Every route but /healthz and /readyz takes one of the role aliases below (Reader, Manager,
WorkerRole, Admin); tests/test_route_security.py fails on a route that does not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.storages import BaseStorage
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db.teams import Principal, authenticate
from service.engine.checkpoints import ArtifactStore
from service.errors import Forbidden, Unauthorized
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


# async where a dependency does no I/O: FastAPI runs a plain `def` dependency on its thread pool,
# and each such hop costs a worker-protocol call about as much as a database round trip.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

_bearer = HTTPBearer(auto_error=False, description="A team token: `Authorization: Bearer hpo_...`")


def get_caller(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The token's team and role: 401 for a missing, unknown, revoked or expired token."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
    with runtime.transaction() as session:
        return authenticate(session, credentials.credentials)


def _either(roles: tuple[str, ...]) -> str:
    return roles[0] if len(roles) == 1 else f"{', '.join(roles[:-1])} or {roles[-1]}"


def require(*roles: str) -> Any:
    """An Annotated dependency: the caller, if their token has one of `roles`; 403 otherwise."""
    allowed = frozenset(roles)

    async def check(request: Request, caller: Annotated[Principal, Depends(get_caller)]) -> Principal:
        if caller.role not in allowed:
            route = request.scope.get("route")
            what = f"{request.method} {getattr(route, 'path', request.url.path)}"
            raise Forbidden(f"{what} needs role {_either(roles)}; this token is {caller.role}")
        return caller

    check.roles = roles  # type: ignore[attr-defined]  # read by the route-security test
    return Annotated[Principal, Depends(check)]


# Reading studies and presets.
Reader = require("viewer", "member", "admin")
# Creating, stopping and deleting studies.
Manager = require("member", "admin")
# The worker protocol: claim, report, heartbeat, finish, checkpoints.
WorkerRole = require("worker", "admin")
# The team's tokens and audit trail.
Admin = require("admin")
