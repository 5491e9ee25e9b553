"""One renderer for every error: {"error": code, "detail": message}."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.engine.storage import DATABASE_ERRORS, database_down, transaction_conflict
from service.errors import ServiceError, ServiceUnavailable

log = logging.getLogger("hpo.api")

# Codes for the errors Starlette and FastAPI raise themselves (unknown route, wrong method, ...),
# the same as our own classes use for the same status.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """Name each bad field by its path, with pydantic's explanation of what is allowed."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        # Model-level checks already start with the field path.
        parts.append(msg if not loc or msg.startswith(loc) else f"{loc}: {msg}")
    return "; ".join(parts)


def _body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def render(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one shape of an error answer, for the routes, the dashboard mount and the ASGI
    middleware alike."""
    return JSONResponse(_body(code, detail), status_code=status, headers=dict(headers or {}))


def error_response(exc: BaseException, method: str, path: str) -> JSONResponse:
    """The answer to an exception out of a route (the handlers below; and the report fast path,
    service/api/report_fast_path.py, which runs outside FastAPI's)."""
    if isinstance(exc, ServiceError):
        return render(exc.status_code, exc.code, exc.detail, exc.headers())
    if isinstance(exc, DATABASE_ERRORS):
        # The database went away (restart, failover, network): a 503 the client may retry, never a 500.
        if transaction_conflict(exc):
            # A deadlock victim: retryable, but the database is fine (no outage to note).
            return error_response(ServiceUnavailable("a concurrent request conflicted; retry"), method, path)
        if database_down(exc):
            log.warning("database unavailable during %s %s: %s", method, path, type(exc).__name__)
            return error_response(ServiceUnavailable("the database is unavailable; retry shortly"), method, path)
    log.error("unexpected error in %s %s", method, path, exc_info=exc)
    return JSONResponse(_body("internal_error", type(exc).__name__), status_code=500)


def install(app: FastAPI) -> None:
    async def _error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, request.method, request.url.path)

    for kind in (ServiceError, *DATABASE_ERRORS, Exception):
        app.add_exception_handler(kind, _error)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_body("invalid_request", describe_validation(list(exc.errors()))), status_code=422)

    @app.exception_handler(ValidationError)
    async def _model_invalid(_: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse(_body("invalid_request", describe_validation(list(exc.errors()))), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone_away(request: Request, _: ClientDisconnect) -> JSONResponse:
        # The client hung up in the middle of its request body: nobody reads this answer.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return JSONResponse(_body("bad_request", "the client disconnected before its request body was complete"), status_code=400)

