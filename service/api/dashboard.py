"""optuna-dashboard inside the service, at /dashboard, behind our tokens.

- `GET /dashboard/login` is a form that takes a token; `POST /dashboard/login` checks it (viewer,
  member or admin; not worker) and sets a session cookie (`HttpOnly`, `SameSite=Strict`,
  `Secure` unless HPO_COOKIE_SECURE=false, path /dashboard). The cookie holds a random session
  id; the database keeps its hash (service/db/sessions.py). `POST /dashboard/logout` ends it.
- Without a session: HTML pages redirect (303) to the login form, `/dashboard/api/...` is 401.
- Each team gets its own optuna-dashboard app on a TeamStorage, so it lists only the team's
  studies and answers 404 for anyone else's study or trial; the ids in the path are also
  checked here before the dashboard sees the request.
- Writes (any method but GET/HEAD) need member or admin: a viewer gets 403. Deleting a study
  that the REST API created goes through the same code as `DELETE /api/v1/studies/{name}`
  (our study row and the audit trail too); creating and renaming studies is left to the REST
  API (a renamed Optuna study would lose its definition), so those answer 409.

optuna-dashboard expects to sit at the root of a host (it fetches `/api/...` and loads
`/static/bundle.js`); the page served here loads the bundle from /dashboard/static and a small
script first that points the dashboard's `fetch` calls at /dashboard/api."""

from __future__ import annotations

import html
import re
import threading
from importlib.resources import files
from urllib.parse import parse_qs

import optuna_dashboard
from a2wsgi import WSGIMiddleware
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from service.api.deps import Runtime
from service.db import audit, sessions
from service.db.studies import get_study
from service.db.teams import Principal
from service.engine import studies
from service.engine.team_storage import TeamStorage
from service.errors import ServiceError

PREFIX = "/dashboard"
COOKIE = "hpo_dashboard"
WRITERS = ("member", "admin")
# Paths the optuna-dashboard app itself answers; everything else is the single-page app.
FORWARDED = ("/api/", "/static/", "/csv/", "/artifacts/")
# The ids in the dashboard's paths: study ids, and trial ids (under /api/trials/ and as the
# second number of /api/studies/<study>/<trial>/...).
_STUDY_PATH = re.compile(r"^/(?:api/studies|api/artifacts|csv|artifacts)/(\d+)(?:/(\d+))?(?:/|$)")
_TRIAL_PATH = re.compile(r"^/api/trials/(\d+)")
_STUDY_DELETE = re.compile(r"^/api/studies/(\d+)$")

# Loaded before the dashboard's bundle: its API client fetches absolute /api/... paths.
PREFIX_JS = (
    "(function(){var f=window.fetch.bind(window);window.fetch=function(u,o){"
    "if(typeof u==='string'&&u.indexOf('/api/')===0){u='" + PREFIX + "'+u;}return f(u,o);};})();\n"
)
# optuna-dashboard's own Content-Security-Policy for its page.
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


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


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
        settings = runtime.settings
        path = scope["path"]
        path = path[path.index(PREFIX) + len(PREFIX) :] if PREFIX in path else path
        method = request.method

        if path == "/login":
            if method in ("GET", "HEAD"):
                return HTMLResponse(LOGIN_PAGE.format(error="", prefix=PREFIX), headers={"Cache-Control": "no-store"})
            if method == "POST":
                return await self._login(request, runtime)
            return _error(405, "method_not_allowed", "use GET or POST")
        if path == "/logout":
            if method != "POST":
                return _error(405, "method_not_allowed", "use POST")
            raw = request.cookies.get(COOKIE)
            if raw:
                await run_in_threadpool(self._logout, runtime, raw)
            response = RedirectResponse(f"{PREFIX}/login", status_code=303)
            response.delete_cookie(COOKIE, path=PREFIX, secure=settings.cookie_secure, httponly=True, samesite="strict")
            return response

        caller = await run_in_threadpool(self._caller, runtime, request.cookies.get(COOKIE))
        if caller is None:
            if path.startswith("/api/"):
                return _error(401, "unauthorized", f"log in at {PREFIX}/login first (no dashboard session, or it has ended)")
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        if method not in ("GET", "HEAD") and caller.role not in WRITERS:
            return _error(403, "forbidden", f"{method} {PREFIX}{path} needs role member or admin; this token is {caller.role}")

        if not path.startswith(FORWARDED) and path != "/favicon.ico":
            if method not in ("GET", "HEAD"):
                return _error(404, "not_found", f"no dashboard route {method} {PREFIX}{path}")
            if self._index is None:
                self._index = _index_html()
            return HTMLResponse(self._index, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})
        if path == "/static/hpo-prefix.js":
            return Response(PREFIX_JS, media_type="text/javascript")

        storage, app = self._team_app(runtime, caller.team.name)
        refused = await run_in_threadpool(self._refuse, runtime, storage, caller, method, path)
        if refused is not None:
            return refused
        # optuna-dashboard answers the rest, as if it sat at the root of the host.
        root = scope.get("root_path", "")
        root = root[: root.index(PREFIX)] if PREFIX in root else root
        inner = dict(scope, root_path=root + PREFIX, path=root + PREFIX + path)
        await app(inner, receive, send)
        return None

    # ------------------------------------------------------------------ blocking helpers (threads)

    def _caller(self, runtime: Runtime, raw: str | None) -> Principal | None:
        if not raw:
            return None
        with runtime.transaction() as session:
            return sessions.principal(session, raw)

    def _logout(self, runtime: Runtime, raw: str) -> None:
        with runtime.transaction() as session:
            sessions.logout(session, raw)

    async def _login(self, request: Request, runtime: Runtime) -> Response:
        body = (await request.body()).decode("utf-8", "replace")
        token = (parse_qs(body).get("token") or [""])[0].strip()

        def _open() -> tuple[str, Principal]:
            with runtime.transaction() as session:
                return sessions.login(session, token, runtime.settings.dashboard_session_seconds)

        try:
            if not token:
                raise _LoginRefused(401, "enter a token")
            raw, _ = await run_in_threadpool(_open)
        except (ServiceError, _LoginRefused) as exc:
            status = exc.status_code if isinstance(exc, ServiceError) else exc.status
            message = f'<p id="error" style="color: #b00">{html.escape(exc.detail)}</p>'
            return HTMLResponse(LOGIN_PAGE.format(error=message, prefix=PREFIX), status_code=status)
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

    def _refuse(self, runtime: Runtime, storage: TeamStorage, caller: Principal, method: str, path: str) -> Response | None:
        """404 for another team's study or trial, 409 for what only the REST API does, and our own
        delete for a study the REST API created; None: let the dashboard answer."""
        missing = _error(404, "not_found", f"no such study or trial: {PREFIX}{path}")
        if (m := _STUDY_PATH.match(path)) is not None:
            if not storage.owns_study(int(m.group(1))):
                return missing
            if m.group(2) is not None and "/preference/" not in path and not storage.owns_trial(int(m.group(2))):
                return missing
        if (m := _TRIAL_PATH.match(path)) is not None and not storage.owns_trial(int(m.group(1))):
            return missing
        if method == "POST" and (path == "/api/studies" or path.endswith("/rename")):
            return _error(409, "conflict", "studies are created and named through the REST API (POST /api/v1/studies), not in the dashboard")
        if method == "DELETE" and (m := _STUDY_DELETE.match(path)) is not None:
            with runtime.transaction() as session:
                name = storage.get_study_name_from_id(int(m.group(1)))
                record = get_study(session, caller.team.id, name.split("/", 1)[1], lock=True)
                if record is None:
                    return None  # made outside the REST API: the dashboard deletes it itself
                audit.record(session, caller.team.id, "study.delete", record.name, actor=caller.prefix, role=caller.role, detail={"optuna_name": name, "via": "dashboard"})
                studies.delete(session, runtime.storage, record)
            return Response(status_code=204)
        return None


class _LoginRefused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
