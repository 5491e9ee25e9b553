"""The FastAPI application. uvicorn builds it with `service.api.app:create_app` (factory)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service import metrics as instruments
from service.api import errors, metrics, plots, presets, queue, studies, study_lifecycle, study_transfer, tokens, trials
from service.api.dashboard import PREFIX as DASHBOARD_PREFIX
from service.api.dashboard import Dashboard
from service.api.deps import Runtime
from service.api.limits import BodyLimit
from service.api.report_batcher import ReportBatcher
from service.api.auth_throttle import AuthThrottle
from service.api.report_fast_path import ReportFastPath
from service.api.metrics import RequestMetrics
from service.api.request_guard import RequestGuard
from service.db.session import make_engine, make_sessionmaker, ping
from service.engine.checkpoints import artifact_store
from service.engine.reaper import Reaper
from service.engine.state import EngineState
from service.engine.storage import database_engine, make_storage
from service.settings import Settings, get_settings


def build_runtime(settings: Settings) -> Runtime:
    if not settings.database_url:
        raise RuntimeError("HPO_DATABASE_URL is not set; `hpo serve` sets it (or starts the embedded database)")
    engine = make_engine(settings.database_url, settings)
    storage = make_storage(settings.database_url, settings)
    state = EngineState()
    for pool in (engine, database_engine(storage) or engine):
        instruments.watch_pool(pool, settings.pool_size + settings.max_overflow)
        state.outages.watch(pool)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        storage=storage,
        state=state,
        store=artifact_store(settings),
        renders=threading.BoundedSemaphore(settings.render_concurrency),
    )


def _document_definition_schema(app: FastAPI) -> None:
    """The create and report routes read their bodies themselves (create: JSON or YAML; report:
    after its token), so FastAPI cannot see the StudySpec and ReportRequest schemas; add them to
    the OpenAPI components where the routes' $refs point."""
    from fastapi.openapi.utils import get_openapi

    from service.api.schemas import ReportRequest
    from service.spec import StudySpec

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            definition = StudySpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definition.pop("$defs", {}))
            components["StudySpec"] = definition
            components["ReportRequest"] = ReportRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class _Service(FastAPI):
    """FastAPI, with well-formed reports answered before its middleware stack and routing
    (service/api/report_fast_path.py); `report_fast_path=False` sends them to the route too."""

    def __init__(self, *, settings: Settings, report_fast_path: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        stack = super().__call__
        self.fast_path = (
            ReportFastPath(stack, lambda: self.state.reports, settings.max_body_bytes, settings.body_timeout_seconds)
            if report_fast_path
            else None
        )
        # Outermost first: every answer counted (GET /metrics), paths no route has (control
        # characters), then refused tokens.
        self._entry = RequestMetrics(self._redirect_or(
            RequestGuard(AuthThrottle(self.fast_path or stack, failures_per_minute=settings.auth_failures_per_minute))
        ))

    @staticmethod
    def _redirect_or(app: ASGIApp) -> ASGIApp:
        async def entry(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"] == DASHBOARD_PREFIX:
                # The one redirect the service makes, with a relative Location: Starlette's
                # trailing-slash redirects are built from the Host header, which any client sets
                # (the review's finding 16), so they are off (redirect_slashes below).
                await RedirectResponse(DASHBOARD_PREFIX + "/", status_code=307)(scope, receive, send)
                return
            await app(scope, receive, send)

        return entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)


def create_app(settings: Settings | None = None, *, report_fast_path: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = app.state.runtime = build_runtime(settings)
        reports = app.state.reports = ReportBatcher(runtime)
        reaper = Reaper(runtime.sessions, runtime.storage, runtime.state, runtime.store, settings)
        reaper.start()
        try:
            yield
        finally:
            reaper.stop()
            reports.close()
            runtime.engine.dispose()
            metrics.process_ended()

    app = _Service(
        settings=settings,
        report_fast_path=report_fast_path,
        title="hpo",
        version="0.1.0",
        summary="Hyperparameter optimization for PyTorch: studies in, trials out, Optuna on PostgreSQL underneath.",
        lifespan=lifespan,
        # The API's documentation holds no team data; HPO_API_DOCS=false takes it off the server.
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    _document_definition_schema(app)
    app.router.redirect_slashes = False
    errors.install(app)
    app.include_router(studies.router)
    app.include_router(study_lifecycle.router)
    app.include_router(study_transfer.router)
    app.include_router(plots.router)
    app.include_router(trials.router)
    app.include_router(queue.router)
    app.include_router(presets.router)
    app.include_router(tokens.router)
    app.router.routes.append(metrics.route)
    # optuna-dashboard, behind a login with a team token (service/api/dashboard.py).
    app.mount(DASHBOARD_PREFIX, Dashboard(), name="dashboard")
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.max_body_bytes,
        max_checkpoint_bytes=settings.max_checkpoint_bytes,
        max_import_bytes=settings.max_import_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
    )

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers. Needs no token."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "the database is unreachable"}})
    def readyz(request: Request) -> dict[str, str]:
        """Readiness: the database answers. Needs no token; 503 with Retry-After while it doesn't."""
        runtime = request.app.state.runtime
        ping(runtime.engine)
        return {"status": "ready"}

    return app
