"""The dashboard's login form, login and logout, and the cross-site checks that go with them.

Cross-site requests (login CSRF: logging a victim into the attacker's team; logout CSRF; a
forged write) are refused by their Origin: a POST, PUT, DELETE or PATCH whose Origin header
is not this server (`null` included, which is what a sandboxed frame or a no-referrer page
sends) is 403. Without an Origin header the Referer is checked the same way. With neither the
request is let through: every browser of the last years sends Origin on a cross-origin POST
(and a form POST cannot suppress it), so a request with neither comes from curl, a script or a
very old browser, none of which is a victim's browser carrying its cookie. "This server" is the
Host header the request came with (scheme ignored, so a TLS-terminating proxy works): a
reverse proxy must pass Host through (nginx: `proxy_set_header Host $host;`).

The login page sends a CSP with `frame-ancestors 'none'` and X-Frame-Options DENY, so it cannot
be framed (clickjacked)."""

from __future__ import annotations

import html
import logging
import re
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.api.dashboard_guard import PREFIX
from service.api.errors import render
from service.api.deps import Runtime
from service.db import dashboard_sessions
from service.db.teams import Principal
from service.errors import ServiceError, Unauthorized

log = logging.getLogger("hpo.dashboard")

COOKIE = "hpo_dashboard"
# The login page: nothing but its inline style attributes, and the form posting to us.
LOGIN_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
LOGIN_HEADERS = {
    "Content-Security-Policy": LOGIN_CSP,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_TOKEN_PREFIX = re.compile(r"hpo_[0-9a-f]{8}")

LOGIN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hpo dashboard: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">
<h1>hpo dashboard</h1>
<p>Log in with a team token (role viewer, member or admin). The dashboard shows your team's studies only.</p>
{error}
<form method="post" action="{prefix}/login">
<label for="token">Token</label><br>
<input id="token" name="token" type="password" autocomplete="off" size="60" required autofocus><br><br>
<button id="login" type="submit">Log in</button>
</form>
</body></html>
"""


def foreign_origin(request: Request) -> str | None:
    """The other site this request was sent from, or None when it is this one or unsaid."""
    said = request.headers.get("origin")
    if said is None:
        said = request.headers.get("referer")
        if said is None:
            return None
    if said == "null":
        return "null"
    parts = urlsplit(said)
    host = (request.headers.get("host") or "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.netloc.lower() != host:
        return said[:200]
    return None


def cross_site(request: Request) -> Response | None:
    """403 for a cross-site request, None otherwise."""
    other = foreign_origin(request)
    if other is None:
        return None
    return render(403, "forbidden", f"cross-site request refused: it comes from {other!r}, not from this server")


def login_page(message: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(LOGIN_PAGE.format(error=message, prefix=PREFIX), status_code=status, headers=LOGIN_HEADERS)


def _named(token: str) -> str:
    """How a log line names a submitted token: its prefix, never more of it."""
    found = _TOKEN_PREFIX.match(token)
    return found.group(0) if found else "(not an hpo token)"


async def login(request: Request, runtime: Runtime) -> Response:
    refused = cross_site(request)
    if refused is not None:
        return refused
    body = (await request.body()).decode("utf-8", "replace")
    token = (parse_qs(body).get("token") or [""])[0].strip()

    def _open() -> tuple[str, Principal]:
        with runtime.transaction() as session:
            return dashboard_sessions.login(session, token, runtime.settings.dashboard_session_seconds)

    try:
        if not token:
            raise Unauthorized("enter a token")
        raw, _ = await run_in_threadpool(_open)
    except ServiceError as exc:
        status = exc.status_code
        # Not in the team's audit trail: anyone can send these, and must not be able to flood
        # it. The log has them, with the prefix and the client's address.
        client = request.client.host if request.client else "unknown"
        log.warning("dashboard login refused (%d) for token %s from %s: %s", status, _named(token), client, exc.detail)
        return login_page(f'<p id="error" style="color: #b00">{html.escape(exc.detail)}</p>', status)
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    response.set_cookie(
        COOKIE,
        raw,
        max_age=int(runtime.settings.dashboard_session_seconds),
        path=PREFIX,
        secure=runtime.settings.cookie_secure,
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(request: Request, runtime: Runtime) -> Response:
    refused = cross_site(request)
    if refused is not None:
        return refused
    raw = request.cookies.get(COOKIE)
    if raw:

        def _end() -> None:
            with runtime.transaction() as session:
                dashboard_sessions.logout(session, raw)

        await run_in_threadpool(_end)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    settings = runtime.settings
    response.delete_cookie(COOKIE, path=PREFIX, secure=settings.cookie_secure, httponly=True, samesite="strict")
    return response
