"""The first thing every request meets: a path or query that holds what no name of ours can.

Study names, token prefixes, ids and every query value end up as SQL parameters, and
PostgreSQL refuses NUL in text: `GET /api/v1/studies/x%00` used to be a 500 DataError (the
review's finding 5). No route, ours or optuna-dashboard's, has a control character in its path,
so such a path is 404 before any route sees it; a query value that holds one is 422 naming the
parameter. Both are answered in the API's error shape."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import InvalidRequest, NotFound, ServiceError
from service.spec.limits import bad_text, has_control_character


def _control(text: str) -> bool:
    return has_control_character(text) or bad_text(text) is not None


def refusal(scope: Scope) -> ServiceError | None:
    """The error for a request no route may see, or None."""
    if _control(scope.get("path", "")):
        return NotFound("no such route: the path holds a control character")
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if _control(name) or _control(value):
                return InvalidRequest(f"{name[:40]!r}: a query parameter may not hold a control character or NUL")
    return None


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = refusal(scope) if scope["type"] == "http" else None
        if refused is None:
            await self.app(scope, receive, send)
            return
        await error_response(refused, scope["method"], scope["path"])(scope, receive, send)
