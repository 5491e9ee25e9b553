"""optuna-dashboard inside the service, at /dashboard, behind our tokens.

- `GET /dashboard/login` is a form that takes a token; `POST /dashboard/login` checks it (viewer,
  member or admin; not worker) and sets a session cookie (`HttpOnly`, `SameSite=Strict`,
  `Secure` unless HPO_COOKIE_SECURE=false, path /dashboard). The cookie holds a random session
  id; the database keeps its hash (service/db/dashboard_sessions.py). `POST /dashboard/logout` ends it.
  Both refuse a cross-site request (service/api/dashboard_login.py).
- Without a session: HTML pages redirect (303) to the login form, `/dashboard/api/...` is 401.
- Each team gets its own optuna-dashboard app on a TeamStorage, so it lists only the team's
  studies and answers 404 for anyone else's study or trial.
- Writes (any method but GET/HEAD) need member or admin (a viewer gets 403) and must not come
  from another site (403).
- Only the routes on the allow-list of service/api/dashboard_routes.py reach optuna-dashboard,
  at their canonical path; service/api/dashboard_guard.py decides each request: 404 for what is
  not on the list or not the team's, 409 for creating and renaming studies (the REST API's job:
  a renamed Optuna study would lose its definition), our own audited delete for a study, and
  checked, audited writes.

optuna-dashboard expects to sit at the root of a host (it fetches `/api/...` and loads
`/static/bundle.js`); the page served here loads the bundle from /dashboard/static and a small
script first that points the dashboard's `fetch` calls at /dashboard/api."""

from __future__ import annotations

import logging
import threading
from importlib.resources import files

import optuna_dashboard
from a2wsgi import WSGIMiddleware
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Message, Receive, Scope, Send

from service.api import dashboard_login
from service.api.dashboard_guard import PREFIX, Event, Forward, decide, record
from service.api.errors import render
from service.api.dashboard_login import COOKIE, cross_site, login_page
from service.api.deps import Runtime
from service.db import dashboard_sessions
from service.db.teams import Principal
from service.engine.team_storage import TeamStorage

__all__ = ["COOKIE", "PREFIX", "Dashboard"]

log = logging.getLogger("hpo.dashboard")

WRITERS = ("member", "admin")
SAFE_METHODS = ("GET", "HEAD")
# Paths the optuna-dashboard app itself answers; everything else is the single-page app.
FORWARDED = ("/api/", "/static/", "/csv/", "/artifacts/")

# Loaded before the dashboard's bundle: its API client fetches absolute /api/... paths.
PREFIX_JS = (
    "(function(){var f=window.fetch.bind(window);window.fetch=function(u,o){"
    "if(typeof u==='string'&&u.indexOf('/api/')===0){u='" + PREFIX + "'+u;}return f(u,o);};})();\n"
)
# optuna-dashboard's own Content-Security-Policy for its page, plus frame-ancestors.
CSP = ";".join(
    [
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "frame-src 'self'",
        "object-src 'none'",
        "connect-src 'self'",
        "style-src 'self' data: 'unsafe-inline'",
        "script-src 'self' 'unsafe-eval'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


def _index_html() -> str:
    page = files(optuna_dashboard).joinpath("index.html").read_text()
    shim = f'<script defer src="{PREFIX}/static/hpo-prefix.js"></script>\n    '
    patched = page.replace('<script defer src="/static/bundle.js">', shim + f'<script defer src="{PREFIX}/static/bundle.js">')
    if patched == page:  # pragma: no cover - a new optuna-dashboard changed its page
        raise RuntimeError("optuna-dashboard's index.html no longer loads /static/bundle.js; update service/api/dashboard.py")
    return patched


class Dashboard:
    """The ASGI app mounted at /dashboard."""

    def __init__(self) -> None:
        self._apps: dict[str, tuple[TeamStorage, WSGIMiddleware]] = {}
        self._lock = threading.Lock()
        self._index: str | None = None

    def _team_app(self, runtime: Runtime, team: str) -> tuple[TeamStorage, WSGIMiddleware]:
        with self._lock:
            if team not in self._apps:
                storage = TeamStorage(runtime.storage, team, runtime.engine)
                self._apps[team] = (storage, WSGIMiddleware(optuna_dashboard.wsgi(storage), workers=4))
            return self._apps[team]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = await self._answer(scope, receive, send)
        if response is not None:
            await response(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> Response | None:
        request = Request(scope, receive)
        runtime: Runtime = request.app.state.runtime
        path = scope["path"]
        path = path[path.index(PREFIX) + len(PREFIX) :] if PREFIX in path else path
        method = request.method

        if path == "/login":
            if method in SAFE_METHODS:
                return login_page()
            if method == "POST":
                return await dashboard_login.login(request, runtime)
            return render(405, "method_not_allowed", "use GET or POST")
        if path == "/logout":
            if method != "POST":
                return render(405, "method_not_allowed", "use POST")
            return await dashboard_login.logout(request, runtime)

        caller = await run_in_threadpool(self._caller, runtime, request.cookies.get(COOKIE))
        if caller is None:
            if path.startswith("/api/"):
                return render(401, "unauthorized", f"log in at {PREFIX}/login first (no dashboard session, or it has ended)")
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        if method not in SAFE_METHODS:
            if caller.role not in WRITERS:
                return render(403, "forbidden", f"{method} {PREFIX}{path} needs role member or admin; this token is {caller.role}")
            refused = cross_site(request)
            if refused is not None:
                return refused

        if not path.startswith(FORWARDED) and path != "/favicon.ico":
            if method not in SAFE_METHODS:
                return render(404, "not_found", f"no dashboard route {method} {PREFIX}{path}")
            if self._index is None:
                self._index = _index_html()
            return HTMLResponse(self._index, headers=PAGE_HEADERS)
        if path == "/static/hpo-prefix.js":
            return Response(PREFIX_JS, media_type="text/javascript")

        storage, app = self._team_app(runtime, caller.team.name)
        body = await request.body() if method not in SAFE_METHODS else b""
        decision = await run_in_threadpool(
            decide, runtime, storage, caller, method, path, request.query_params, request.headers.get("content-type"), body
        )
        if isinstance(decision, Response):
            return decision
        await self._forward(scope, receive, send, app, decision, runtime, caller)
        return None

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, app: WSGIMiddleware, decision: Forward, runtime: Runtime, caller: Principal
    ) -> None:
        """optuna-dashboard answers, as if it sat at the root of the host, at the canonical path
        and with the checked body; a 2xx answer to a write is audited before it is sent on."""
        root = scope.get("root_path", "")
        root = root[: root.index(PREFIX)] if PREFIX in root else root
        full = root + PREFIX + decision.path
        inner = dict(scope, root_path=root + PREFIX, path=full, raw_path=full.encode())
        if decision.body is not None:
            headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-length", b"content-type", b"transfer-encoding")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(decision.body)).encode())]
            inner["headers"] = headers
            receive = _replay(decision.body, receive)
        await app(inner, receive, _audited(send, decision.event, runtime, caller))

    # ------------------------------------------------------------------ blocking helpers (threads)

    def _caller(self, runtime: Runtime, raw: str | None) -> Principal | None:
        if not raw:
            return None
        with runtime.transaction() as session:
            return dashboard_sessions.principal(session, raw)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request body, already read (and checked), once more for optuna-dashboard."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as a server would

    return again


def _audited(send: Send, event: Event | None, runtime: Runtime, caller: Principal) -> Send:
    if event is None:
        return send

    async def audited_send(message: Message) -> None:
        if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
            try:
                await run_in_threadpool(record, runtime, caller, event)
            except Exception:  # the write is done; the log keeps what the trail could not
                log.exception("could not audit %s by %s on %s: %s", event.action, caller.prefix, event.target, event.detail)
        await send(message)

    return audited_send
