"""Dependencies as Annotated aliases: the process-wide state, and the caller (team and role).

Every route but /healthz and /readyz takes one of the role aliases below (Reader, Manager,
WorkerRole, Admin); tests/test_route_security.py fails on a route that does not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
import threading
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db.teams import Principal, authenticate
from service.engine.checkpoints import ArtifactStore
from service.engine.state import EngineState
from service.engine.storage import Storage
from service.errors import Forbidden, ServiceUnavailable, Unauthorized
from service.settings import Settings


T = TypeVar("T")


@dataclass
class Runtime:
    """What one API process holds: settings, our engine, Optuna's storage, the checkpoint store."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    # The studies' trial views and definitions, and when the database was last away.
    state: EngineState
    store: ArtifactStore
    # Turns at drawing plots and reports (settings.render_concurrency): see `drawing`.
    renders: threading.BoundedSemaphore

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The request boundary: commit on success, roll back on any error."""
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def drawing(self) -> Iterator[None]:
        """A turn at CPU-heavy drawing (matplotlib, fANOVA), or 503 after render_wait_seconds:
        one viewer asking for many reports at once must not slow every other route of the
        process (the review's finding 15), the worker protocol included."""
        if not self.renders.acquire(timeout=self.settings.render_wait_seconds):
            raise ServiceUnavailable(f"{self.settings.render_concurrency} plots or reports are being drawn already; retry shortly")
        try:
            yield
        finally:
            self.renders.release()


# async where a dependency does no I/O: FastAPI runs a plain `def` dependency on its thread pool,
# and each such hop costs a worker-protocol call about as much as a database round trip.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

_bearer = HTTPBearer(auto_error=False, description="A team token: `Authorization: Bearer hpo_...`")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
    return credentials.credentials


def get_caller(runtime: RuntimeDep, credentials: Credentials) -> Principal:
    """The token's team and role: 401 for a missing, unknown, revoked or expired token.

    Outside a transaction (autocommit): the check is one read, plus at most a minute's touch
    that is right on its own, so BEGIN and COMMIT would be two round trips for nothing on every
    request."""
    return _authenticate(runtime, _bearer_token(credentials))


def _authenticate(runtime: Runtime, token: str) -> Principal:
    with runtime.engine.connect() as conn, Session(bind=conn.execution_options(isolation_level="AUTOCOMMIT")) as session:
        return authenticate(session, token)


def _either(roles: tuple[str, ...]) -> str:
    return roles[0] if len(roles) == 1 else f"{', '.join(roles[:-1])} or {roles[-1]}"


def authorize(roles: tuple[str, ...], what: str, caller: Principal) -> None:
    """Forbidden unless the caller's token has one of `roles`; `what` names the call."""
    if caller.role not in roles:
        raise Forbidden(f"{what} needs role {_either(roles)}; this token is {caller.role}")


def _role_check(roles: tuple[str, ...]) -> Callable[..., Any]:
    """A dependency: the caller, if their token has one of `roles`; 403 otherwise."""

    async def check(request: Request, caller: Annotated[Principal, Depends(get_caller)]) -> Principal:
        authorize(roles, _what(request), caller)
        return caller

    check.roles = roles  # type: ignore[attr-defined]  # read by the route-security test
    return check


def require(*roles: str) -> Any:
    """An Annotated dependency: the caller, if their token has one of `roles`; 403 otherwise."""
    return Annotated[Principal, Depends(_role_check(roles))]


@dataclass
class Call:
    """A caller whose token was checked (401, 403 as `require`, before the body is validated),
    and `run`, which does the route's work in one transaction on one thread-pool hop. The worker
    protocol's calls are small and many: a plain `def` route would add a hop to the pool, and a
    dependency keeping its connection for the route could starve the pool of threads."""

    runtime: Runtime
    principal: Principal

    async def run(self, work: Callable[[Principal, Session], T]) -> T:
        """`work(caller, session)`, then commit; rolled back if anything raises. `work` may
        commit part-way itself."""

        def job() -> T:
            with self.runtime.sessions() as session:
                result = work(self.principal, session)
                session.commit()
                return result

        return await run_in_threadpool(job)


def require_call(*roles: str) -> Any:
    """Like `require` (the same check), but the route gets a `Call` to do its work with."""
    check = _role_check(roles)

    async def open_call(runtime: RuntimeDep, caller: Principal = Depends(check)) -> Call:
        return Call(runtime, caller)

    return Annotated[Call, Depends(open_call)]


@dataclass
class Bearer:
    """A bearer token the route checks together with its work (a report: in its batch's
    transaction, service/api/report_batcher.py), and its roles: `check` checks it alone, for
    an answer that must not come before the token's (a 422 comes after 401 and 403)."""

    runtime: Runtime
    token: str
    roles: tuple[str, ...]
    what: str

    def authorize(self, caller: Principal) -> None:
        authorize(self.roles, self.what, caller)

    async def check(self) -> Principal:
        caller = await run_in_threadpool(_authenticate, self.runtime, self.token)
        self.authorize(caller)
        return caller


def require_bearer(*roles: str) -> Any:
    """Like `require`, but the token is only read from the request here (401 if there is none);
    the route checks it (see Bearer)."""

    async def bearer(request: Request, runtime: RuntimeDep, credentials: Credentials) -> Bearer:
        return Bearer(runtime, _bearer_token(credentials), roles, _what(request))

    bearer.roles = roles  # type: ignore[attr-defined]  # read by the route-security test
    return Annotated[Bearer, Depends(bearer)]


def _what(request: Request) -> str:
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"


# Reading studies and presets.
Reader = require("viewer", "member", "admin")
# Creating, stopping and deleting studies.
Manager = require("member", "admin")
# The worker protocol: claim, report, heartbeat, finish, checkpoints.
WORKER_ROLES = ("worker", "admin")
WorkerRole = require(*WORKER_ROLES)
# The same, for the calls made many times per trial: the route's work runs through `Call.run`.
WorkerCall = require_call(*WORKER_ROLES)
# The same, for reports: the token is checked in the report's batch.
WorkerBearer = require_bearer(*WORKER_ROLES)
# The team's tokens and audit trail.
Admin = require("admin")
