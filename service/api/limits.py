"""Request body limits, as a pure ASGI middleware so that it also holds for streamed bodies.

A body over its limit is refused with 413 and the usual error body, before the route stores
anything: at once when Content-Length says so, and otherwise (no Content-Length, chunked, or a
Content-Length that lies) as soon as the bytes received pass the limit."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge

# The checkpoint upload is the one route with a large body: model and optimizer state.
CHECKPOINT_ROUTE = re.compile(r"^/api/v1/trials/[^/]+/checkpoint/?$")


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_checkpoint_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_checkpoint_bytes = max_checkpoint_bytes

    def limit_for(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "POST" and CHECKPOINT_ROUTE.match(scope["path"]):
            return self.max_checkpoint_bytes, "HPO_MAX_CHECKPOINT_BYTES"
        return self.max_body_bytes, "HPO_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope)
        error = PayloadTooLarge(f"the request body is over the limit of {limit} bytes ({setting})")
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, error)
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise error
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # The route's body read failed; whatever the app makes of that (FastAPI turns a
                # failed read into a 400), the answer is our 413.
                if not started:
                    started = True
                    await _refuse(send, error)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLarge:
            if not exceeded:
                raise
            if not started:
                started = True
                await _refuse(send, error)


def _content_length(scope: Scope) -> int | None:
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
    if len(values) != 1:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


async def _refuse(send: Send, error: PayloadTooLarge) -> None:
    body = json.dumps({"error": error.code, "detail": error.detail}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is not read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    start: dict[str, Any] = {"type": "http.response.start", "status": error.status_code, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
