"""Refused tokens, counted per client address: past a limit a minute, that address's requests
with credentials get 429 without a database look-up, until the minute is over.

A 256-bit token secret cannot be guessed, but every guess used to cost the service a query (or
a dashboard login's transaction), and nothing but the access log noticed (the review's finding
14). The count is per API process (replicas count apart) and keyed by the address uvicorn
reports: behind a reverse proxy, run uvicorn with --forwarded-allow-ips (the proxy's address) so
that the client's address is the one counted, or rate-limit in the proxy instead. A refused
token is logged at WARNING once per address and minute, not in a team's audit trail: it belongs
to no team, and an outsider could flood the trail."""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("hpo.auth")

WINDOW_SECONDS = 60.0
# Addresses remembered at once: enough for any fleet, bounded against spoofed sources.
MAX_CLIENTS = 10_000
LOGIN_PATH = "/dashboard/login"
_PREFIX = re.compile(r"hpo_[0-9a-f]{8}")


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _prefix(scope: Scope) -> str:
    """The token's prefix (hpo_<8 hex>), never more of it; '-' when there is none to name."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            token = value.decode("latin-1").partition(" ")[2]
            return token[:12] if _PREFIX.fullmatch(token[:12]) else "(not an hpo token)"
    return "-"


def _has_credentials(scope: Scope) -> bool:
    if scope["method"] == "POST" and scope["path"].endswith(LOGIN_PATH):
        return True
    return any(name in (b"authorization", b"cookie") for name, _ in scope.get("headers", ()))


class AuthThrottle:
    def __init__(self, app: ASGIApp, *, failures_per_minute: int) -> None:
        self.app = app
        self.limit = failures_per_minute
        # address -> (start of its window, refusals in it), oldest window first
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _count(self, client: str, now: float) -> int:
        start, count = self._counts.get(client, (now, 0))
        return 0 if now - start >= WINDOW_SECONDS else count

    def _refused(self, client: str, now: float, scope: Scope) -> None:
        start, count = self._counts.pop(client, (now, 0))
        if now - start >= WINDOW_SECONDS:
            start, count = now, 0
        self._counts[client] = (start, count + 1)
        if count == 0:
            log.warning("refused token %s from %s on %s %s (further refusals from it are counted, not logged, for %.0f s)",
                        _prefix(scope), client, scope["method"], scope["path"], WINDOW_SECONDS)
        if count + 1 == self.limit:
            log.warning("%d refused tokens from %s within %.0f s; its requests with credentials get 429 until then", self.limit, client, WINDOW_SECONDS)
        while len(self._counts) > MAX_CLIENTS:
            self._counts.popitem(last=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.limit <= 0 or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client, now = _client(scope), time.monotonic()
        if self._count(client, now) >= self.limit and _has_credentials(scope):
            start, _ = self._counts[client]
            await _too_many(send, max(1, int(WINDOW_SECONDS - (now - start)) + 1))
            return

        counted = _has_credentials(scope)

        async def watching_send(message: Message) -> None:
            if counted and message["type"] == "http.response.start" and message["status"] == 401:
                self._refused(client, time.monotonic(), scope)
            await send(message)

        await self.app(scope, receive, watching_send)


async def _too_many(send: Send, retry_after: int) -> None:
    body = json.dumps(
        {"error": "too_many_requests", "detail": f"too many refused tokens from this address; retry in {retry_after} s"}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
