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

import logging
import re
import time
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import TooManyRequests

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
        client, now, counted = _client(scope), time.monotonic(), _has_credentials(scope)
        if counted and self._count(client, now) >= self.limit:
            start, _ = self._counts[client]
            retry_after = max(1, int(WINDOW_SECONDS - (now - start)) + 1)
            refused = TooManyRequests(f"too many refused tokens from this address; retry in {retry_after} s", retry_after)
            await error_response(refused, scope["method"], scope["path"])(scope, receive, send)
            return

        async def watching_send(message: Message) -> None:
            if counted and message["type"] == "http.response.start" and message["status"] == 401:
                self._refused(client, time.monotonic(), scope)
            await send(message)

        await self.app(scope, receive, watching_send)
