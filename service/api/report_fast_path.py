"""POST /api/v1/trials/{trial_id}/report without FastAPI's machinery around it, for the reports
that are well formed, which is nearly all of them.

A report is the call a service makes most, once per trial and epoch from every worker; under
load, FastAPI's middleware, routing, dependency solving and response rendering cost several
times what the report's own work does in the API process (docs/benchmarks.md, section b). This
ASGI entry, in front of FastAPI's stack, answers a report that has a bearer token, a
Content-Length within HPO_MAX_BODY_BYTES and a valid body itself: it hands it to
the batcher exactly as the route does (service/api/trials.py: `report`) and writes the answer.
Everything else (no token, a bad body, a path that is not an id) goes on to the route, which
answers it as it always has; so do all other requests. The answers are the route's: the same
JSON, and errors rendered by the API's own error renderer (service/api/errors.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import WORKER_ROLES, authorize
from service.api.errors import error_response
from service.api.limits import receive_within
from service.api.report_batcher import PendingReport, ReportBatcher
from service.api.schemas import ReportRequest
from service.errors import RequestTimeout

REPORT_PATH = re.compile(r"/api/v1/trials/([0-9]{1,9})/report")
ROUTE = "POST /api/v1/trials/{trial_id}/report"
_ANSWERS = {True: b'{"prune":true}', False: b'{"prune":false}'}


def _authorize(caller: object) -> None:
    authorize(WORKER_ROLES, ROUTE, caller)  # type: ignore[arg-type]


class ReportFastPath:
    """The ASGI entry of the app (service/api/app.py): reports it can answer, it answers;
    everything else goes to `app`, FastAPI's own stack. `reports()` is the app's batcher."""

    def __init__(self, app: ASGIApp, reports: Callable[[], ReportBatcher], max_body_bytes: int, body_timeout_seconds: float = 30.0) -> None:
        self.app = app
        self.reports = reports
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = REPORT_PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        token = _bearer_token(scope) if found else None
        length = _content_length(scope) if token else None
        if token is None or length is None or length > self.max_body_bytes:
            # BodyLimit (in the stack) refuses what is over the limit, or has no length to go by.
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            try:
                message = await receive_within(receive, self.body_timeout_seconds)
            except RequestTimeout as exc:
                await error_response(exc, "POST", scope["path"])(scope, receive, send)
                return
            if message["type"] != "http.request":  # the client went away: the route says so
                await self.app(scope, _replay(b"".join(chunks), receive, message), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            body = ReportRequest.model_validate(json.loads(raw))
        except (ValueError, ValidationError, RecursionError):
            await self.app(scope, _replay(raw, receive), send)  # 401, 403, then 422: the route's order
            return
        pending = PendingReport(token, int(found.group(1)), body.lease_id, body.step, body.value, authorize=_authorize)
        try:
            prune = await self.reports().submit(pending)
        except Exception as exc:  # noqa: BLE001  # rendered as the route's error handlers render it
            response = error_response(exc, "POST", scope["path"])
            await response(scope, receive, send)
            return
        answer = _ANSWERS[prune]
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def _bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (FastAPI's HTTPBearer reads it so)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials if scheme.lower() == "bearer" and credentials else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive, last: Message | None = None) -> Receive:
    """A receive that gives the body already read, then (a disconnect, or) whatever comes next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if last is not None:
        pending[0]["more_body"] = True
        pending.append(last)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
