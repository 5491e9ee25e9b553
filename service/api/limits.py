"""Request body limits, as a pure ASGI middleware so that it also holds for streamed bodies.

A body over its limit is refused with 413 and the usual error body, before the route stores
anything: at once when Content-Length says so, and otherwise (no Content-Length, chunked, or a
Content-Length that lies) as soon as the bytes received pass the limit."""

from __future__ import annotations

import asyncio
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import render
from service.errors import PayloadTooLarge, RequestTimeout

# The checkpoint upload is the one route with a large body: model and optimizer state.
CHECKPOINT_ROUTE = re.compile(r"^/api/v1/trials/[^/]+/checkpoint/?$")
# And an Optuna SQLite file, imported into a study.
IMPORT_ROUTE = re.compile(r"^/api/v1/studies/([^/]+/)?import/?$")


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_checkpoint_bytes: int,
        max_import_bytes: int | None = None,
        body_timeout_seconds: float = 30.0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_checkpoint_bytes = max_checkpoint_bytes
        self.max_import_bytes = max_checkpoint_bytes if max_import_bytes is None else max_import_bytes
        self.body_timeout_seconds = body_timeout_seconds

    def limit_for(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "POST" and CHECKPOINT_ROUTE.match(scope["path"]):
            return self.max_checkpoint_bytes, "HPO_MAX_CHECKPOINT_BYTES"
        if scope["method"] == "POST" and IMPORT_ROUTE.match(scope["path"]):
            return self.max_import_bytes, "HPO_MAX_IMPORT_BYTES"
        return self.max_body_bytes, "HPO_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope)
        error = PayloadTooLarge(f"the request body is over the limit of {limit} bytes ({setting})")
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, error)
            return

        received = 0
        refused: PayloadTooLarge | RequestTimeout | None = None
        started = False
        complete = False

        async def counting_receive() -> Message:
            nonlocal received, refused, complete
            if complete:
                return await receive()  # after the body: a wait for the disconnect, unbounded
            try:
                message = await receive_within(receive, self.body_timeout_seconds)
            except RequestTimeout as exc:
                refused = exc
                raise
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > limit:
                    refused = error
                    raise error
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None:
                # The route's body read failed; whatever the app makes of that (FastAPI turns a
                # failed read into a 400), the answer is our 413 (or 408).
                if not started:
                    started = True
                    await _refuse(scope, receive, send, refused)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except (PayloadTooLarge, RequestTimeout):
            if refused is None:
                raise
            if not started:
                started = True
                await _refuse(scope, receive, send, refused)


async def receive_within(receive: Receive, seconds: float) -> Message:
    """The next message of a request body, or RequestTimeout when none comes for `seconds`: a
    client that stops sending in mid-body would otherwise hold its connection (and, on the
    report path, a batch slot) for as long as it likes."""
    try:
        return await asyncio.wait_for(receive(), seconds)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"no part of the request body arrived for {seconds:g} s (HPO_BODY_TIMEOUT_SECONDS)") from None


def _content_length(scope: Scope) -> int | None:
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
    if len(values) != 1:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


async def _refuse(scope: Scope, receive: Receive, send: Send, error: PayloadTooLarge | RequestTimeout) -> None:
    response = render(error.status_code, error.code, error.detail, error.headers())
    # The rest of the body is not read: the connection cannot carry another request.
    response.headers["connection"] = "close"
    await response(scope, receive, send)
