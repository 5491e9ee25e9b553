"""Every route of the real OpenAPI document, called with every kind of wrong token.

The protection a route needs is derived from its method and path (expected_roles); a route this
file cannot classify fails the test, so a route added later without thinking about auth does
not slip through. For each route: no token, a garbage, revoked or expired token -> 401; a token
of a role the route does not allow -> 403; another team's admin token on this team's study,
trial or token -> 404, and on list routes it sees nothing of ours. Nothing of ours changes."""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from tests.conftest import auth, digits_definition, prefix_of

ROLES = ("admin", "member", "worker", "viewer")
READ = ("viewer", "member", "admin")
MANAGE = ("member", "admin")
WORK = ("worker", "admin")
ADMIN = ("admin",)
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz")}
# Starlette's own routes for the documentation; they hold no team data.
DOC_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# Prometheus' scrape, outside the JSON API: its guard is the metrics token or network, never a
# team token (tests/test_metrics.py).
METRICS_ROUTE = "/metrics"
# optuna-dashboard, mounted at /dashboard (service/api/dashboard.py): the login form is open, every
# other path needs a dashboard session, and writes need member or admin.
DASHBOARD = "/dashboard"
DASHBOARD_OPEN = {("GET", "/dashboard/login"), ("POST", "/dashboard/login"), ("POST", "/dashboard/logout")}
# Path parameters that name a team's resource, and so must be 404 to every other team.
RESOURCE_PARAMS = {"name", "trial_id", "prefix"}
# Path parameters that name no resource of a team, with a value that is always valid.
PLAIN_PATH_PARAMS = {"kind": "curves"}


def expected_roles(method: str, path: str) -> tuple[str, ...] | None:
    """The roles a route must demand (None: open to anyone). Fails on a route it doesn't know."""
    if (method, path) in OPEN_ROUTES:
        return None
    if path == "/api/v1/studies/{name}/import/database":
        return ADMIN  # it reads Optuna studies outside the team's own (a notebook's, on the same database)
    if path == "/api/v1/studies" or path.startswith(("/api/v1/studies/", "/api/v1/presets")):
        return READ if method == "GET" else MANAGE
    if path.startswith("/api/v1/trials/") or path == "/api/v1/queue":
        return WORK
    if path in ("/api/v1/tokens", "/api/v1/audit") or path.startswith("/api/v1/tokens/"):
        return ADMIN
    pytest.fail(f"{method} {path}: this test does not know what protection the route needs; classify it in expected_roles")


@dataclass
class World:
    """Team A with a token of every role, a running trial and a deleted study's trial; team B."""

    team: str
    tokens: dict[str, str]
    revoked: str
    expired: str
    study: str
    trial_id: int
    lease_id: str
    other_team: str
    other_admin: str
    identifiers: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(api: Any, make_token: Any) -> Any:
    team, other_team = f"a{uuid.uuid4().hex[:10]}", f"b{uuid.uuid4().hex[:10]}"
    tokens = {role: make_token(team, role) for role in ROLES}
    revoked = make_token(team, "admin")
    assert api.delete(f"/api/v1/tokens/{prefix_of(revoked)}", headers=auth(tokens["admin"])).status_code == 204
    expired = make_token(team, "admin", expires_at=datetime.now(timezone.utc) - timedelta(minutes=1))
    study = f"secret-{uuid.uuid4().hex[:8]}"
    assert api.post("/api/v1/studies", json=digits_definition(study), headers=auth(tokens["member"])).status_code == 201
    claimed = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(tokens["worker"])).json()
    # One reported epoch, so the study has a curve to plot (GET .../plots/curves answers 200).
    report = {"lease_id": claimed["lease_id"], "step": 1, "value": 1.0}
    assert api.post(f"/api/v1/trials/{claimed['trial_id']}/report", json=report, headers=auth(tokens["worker"])).status_code == 200
    w = World(
        team=team,
        tokens=tokens,
        revoked=revoked,
        expired=expired,
        study=study,
        trial_id=claimed["trial_id"],
        lease_id=claimed["lease_id"],
        other_team=other_team,
        other_admin=make_token(other_team),
    )
    w.identifiers = [team, study, *(prefix_of(t) for t in (*tokens.values(), revoked, expired))]
    yield w
    api.delete(f"/api/v1/studies/{study}", headers=auth(tokens["admin"]))


# --------------------------------------------------------------------------- requests from the schema


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def example(doc: dict[str, Any], schema: dict[str, Any], name: str, w: World) -> Any:
    """A plausible value: this world's ids for the fields that name them, else the simplest
    value the schema allows."""
    known = {"lease_id": w.lease_id, "worker_id": "w", "step": 1, "value": 0.5, "state": "failed", "role": "viewer"}
    if name in known:
        return known[name]
    if name == "name":  # a new study's (an import's, a clone's): another team's claims may get it
        return f"theirs-{uuid.uuid4().hex[:6]}"
    schema = resolve(doc, schema)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if resolve(doc, s).get("type") != "null"]
        return example(doc, options[0], name, w) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {p: example(doc, s, p, w) for p, s in schema.get("properties", {}).items() if p in schema.get("required", [])}
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return False
    if kind == "array":
        return [example(doc, schema.get("items", {}), name, w) for _ in range(schema.get("minItems", 0))]
    pytest.fail(f"no example for {name}: {schema}")


@dataclass
class Call:
    method: str
    path: str  # the template, as in the schema
    url: str
    params: dict[str, Any]
    body: dict[str, Any]  # keyword arguments for the request: json= or content= and headers
    resource: bool  # names one of team A's resources

    def send(self, api: Any, token: str | None) -> Any:
        headers = dict(self.body.get("headers", {}))
        if token is not None:
            headers.update(auth(token))
        kwargs = {k: v for k, v in self.body.items() if k != "headers"}
        return api.request(self.method, self.url, params=self.params, headers=headers, **kwargs)


def calls(api: Any, w: World, *, as_other_team: bool = False) -> list[Call]:
    doc = api.get("/openapi.json").json()
    out = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            method = method.upper()
            url, params, resource = path, {}, False
            lease: dict[str, str] = {}
            for p in op.get("parameters", []):
                if p["in"] == "path" and p["name"] in PLAIN_PATH_PARAMS:
                    url = url.replace("{" + p["name"] + "}", PLAIN_PATH_PARAMS[p["name"]])
                elif p["in"] == "path":
                    assert p["name"] in RESOURCE_PARAMS, f"{method} {path}: unknown path parameter {p['name']}"
                    value = {"name": w.study, "trial_id": w.trial_id, "prefix": prefix_of(w.tokens["viewer"])}[p["name"]]
                    url = url.replace("{" + p["name"] + "}", str(value))
                    resource = True
                elif p["in"] == "query" and p.get("required"):
                    params[p["name"]] = example(doc, p["schema"], p["name"], w)
                elif p["in"] == "header" and p["name"] == "X-HPO-Lease":
                    # The checkpoint routes' lease (optional only for older workers' query form).
                    lease = {"X-HPO-Lease": w.lease_id}
            body: dict[str, Any] = {}
            content = op.get("requestBody", {}).get("content", {})
            if content:
                media = next(iter(content))
                if media == "application/octet-stream" and path.endswith("/import"):
                    body = {"content": exported_study(), "headers": {"Content-Type": media}}
                elif media == "application/octet-stream":
                    body = {"content": b"checkpoint", "headers": {"Content-Type": media}}
                elif content[media].get("schema", {}).get("$ref", "").endswith("/StudySpec"):
                    name = f"theirs-{uuid.uuid4().hex[:6]}" if as_other_team else f"{w.study}-2"
                    body = {"json": digits_definition(name)}
                else:
                    body = {"json": example(doc, content[media]["schema"], "body", w)}
            if lease:
                body["headers"] = {**body.get("headers", {}), **lease}
            out.append(Call(method, path, url, params, body, resource))
    return out


def exported_study() -> bytes:
    """An Optuna SQLite file as `GET .../export` writes it: a study carrying its definition."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/study.db"
        optuna.create_study(study_name="exported", storage=url).set_user_attr("hpo_definition", digits_definition("exported"))
        optuna.storages.RDBStorage(url).engine.dispose()
        return (Path(tmp) / "study.db").read_bytes()


def snapshot(api: Any, w: World) -> str:
    """Everything team A can see of itself."""
    admin = auth(w.tokens["admin"])
    parts = [
        api.get(f"/api/v1/studies/{w.study}", headers=admin).json(),
        api.get(f"/api/v1/studies/{w.study}/trials", headers=admin).json(),
        api.get("/api/v1/studies", headers=admin).json(),
        {t["prefix"]: t["revoked_at"] for t in api.get("/api/v1/tokens", headers=admin).json()["tokens"]},
        api.get("/api/v1/audit", headers=admin).json(),
    ]
    return json.dumps(parts, sort_keys=True, default=str)


# --------------------------------------------------------------------------- the tests


def app_routes(app: Any) -> tuple[list[tuple[str, APIRoute]], list[Any]]:
    """(full path, APIRoute) for every API route, and every other route. Newer FastAPI keeps
    included routers as lazily expanded entries; older ones copy their routes in."""
    api_routes, others = [], []
    for route in app.routes:
        if isinstance(route, APIRoute):
            api_routes.append((route.path, route))
        elif hasattr(route, "effective_route_contexts"):
            for context in route.effective_route_contexts():
                assert isinstance(context.original_route, APIRoute), f"unexpected route {context.original_route!r}"
                api_routes.append((context.path, context.original_route))
        else:
            others.append(route)
    return api_routes, others


def test_every_route_is_in_the_schema_and_classified(api: Any) -> None:
    """Routes hidden from the schema would escape the checks below."""
    documented = {(m.upper(), p) for p, ops in api.get("/openapi.json").json()["paths"].items() for m in ops}
    api_routes, others = app_routes(api.app)
    assert len(api_routes) >= 15
    for path, route in api_routes:
        for method in route.methods:
            assert (method, path) in documented, f"{method} {path} is not in /openapi.json"
    for route in others:
        if isinstance(route, Mount):
            # Only the dashboard is mounted; test_dashboard_routes_need_a_session covers it.
            assert route.path == DASHBOARD, f"unexpected mount {route!r}: classify it in this test"
            continue
        assert isinstance(route, Route) and route.path in DOC_ROUTES | {METRICS_ROUTE}, f"unexpected route {route!r}"
    for method, path in documented:
        expected_roles(method, path)


def declared_roles(route: APIRoute) -> list[tuple[str, ...]]:
    found = []
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        if hasattr(dep.call, "roles"):
            found.append(tuple(dep.call.roles))
        pending.extend(dep.dependencies)
    return found


def test_each_route_declares_the_roles_it_should(api: Any) -> None:
    for path, route in app_routes(api.app)[0]:
        for method in route.methods:
            expected = expected_roles(method, path)
            declared = declared_roles(route)
            if expected is None:
                assert declared == [], f"{method} {path} is open but declares {declared}"
            else:
                assert [set(r) for r in declared] == [set(expected)], f"{method} {path}: {declared} != {expected}"


def test_bad_tokens_are_401_everywhere(api: Any, world: World) -> None:
    before = snapshot(api, world)
    checked = 0
    for call in calls(api, world):
        expected = expected_roles(call.method, call.path)
        if expected is None:
            assert call.send(api, None).status_code == 200, call.path
            continue
        for token, words in ((None, "missing bearer token"), ("hpo_00000000_garbage", "invalid token"), (world.revoked, "revoked"), (world.expired, "expired")):
            response = call.send(api, token)
            assert response.status_code == 401, (call.method, call.path, token, response.text)
            assert response.json()["error"] == "unauthorized" and words in response.json()["detail"], response.text
            checked += 1
        # Not a bearer token at all.
        response = api.request(call.method, call.url, params=call.params, headers={"Authorization": "Basic YTpi"})
        assert response.status_code == 401, (call.method, call.path)
    assert checked >= 4 * 15
    assert snapshot(api, world) == before


def test_wrong_roles_are_403_everywhere(api: Any, world: World) -> None:
    before = snapshot(api, world)
    denied = set()
    for call in calls(api, world):
        expected = expected_roles(call.method, call.path)
        if expected is None:
            continue
        for role in ROLES:
            if role in expected:
                # Reads are safe to make: the allowed roles get through. (Writes would change
                # the world; test_tokens.py has each role doing its job.)
                if call.method == "GET":
                    response = call.send(api, world.tokens[role])
                    assert response.status_code in (200, 204), (call.method, call.path, role, response.text)
                continue
            response = call.send(api, world.tokens[role])
            assert response.status_code == 403, (call.method, call.path, role, response.text)
            body = response.json()
            assert body["error"] == "forbidden"
            assert body["detail"].endswith(f"needs role {' or '.join(expected) if len(expected) < 3 else 'viewer, member or admin'}; this token is {role}")
            denied.add((role, call.method, call.path))
    # The matrix the issue asks for, spelled out: a viewer writes nothing; a worker manages
    # nothing and sees no tokens or audit trail.
    writes = {(m, p) for m, p in ((c.method, c.path) for c in calls(api, world)) if m != "GET" and (m, p) not in OPEN_ROUTES}
    assert {("viewer", m, p) for m, p in writes} <= denied
    management = {(m, p) for m, p in writes if p.startswith("/api/v1/studies")}
    admin_routes = {(c.method, c.path) for c in calls(api, world) if c.path.startswith(("/api/v1/tokens", "/api/v1/audit"))}
    assert management and admin_routes
    assert {("worker", m, p) for m, p in management | admin_routes} <= denied
    assert snapshot(api, world) == before


def test_another_team_finds_nothing_of_ours(api: Any, world: World) -> None:
    before = snapshot(api, world)
    for call in calls(api, world, as_other_team=True):
        if expected_roles(call.method, call.path) is None:
            continue
        response = call.send(api, world.other_admin)
        if call.resource:
            # Our study, trial or token, asked for by another team: as if it did not exist.
            assert response.status_code == 404, (call.method, call.path, response.text)
            assert response.json()["error"] == "not_found"
        else:
            # Lists and creations work on their own team and show nothing of ours.
            assert response.status_code < 400, (call.method, call.path, response.text)
            for identifier in world.identifiers:
                assert identifier not in response.text, (call.method, call.path, identifier)
    # Their worker claims nothing of ours (its own team's new study, at most).
    claimed = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(world.other_admin))
    assert claimed.status_code == 204 or claimed.json()["study"].startswith("theirs-")
    assert snapshot(api, world) == before
    # And our own tokens still see everything as it was: the trial runs under its lease.
    trial = api.get(f"/api/v1/studies/{world.study}/trials", headers=auth(world.tokens["viewer"])).json()["trials"][0]
    assert trial["state"] == "RUNNING"
    heartbeat = api.post(f"/api/v1/trials/{world.trial_id}/heartbeat", json={"lease_id": world.lease_id}, headers=auth(world.tokens["worker"]))
    assert heartbeat.status_code == 200


def test_a_deleted_studys_trial_is_gone_for_its_team_and_unknown_to_others(api: Any, make_token: Any, team: str) -> None:
    mine, theirs = make_token(team), make_token(team + "x", "worker")
    api.post("/api/v1/studies", json=digits_definition("short-lived"), headers=auth(mine))
    a = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(mine)).json()
    assert api.delete("/api/v1/studies/short-lived", headers=auth(mine)).status_code == 204
    body = {"lease_id": a["lease_id"]}
    assert api.post(f"/api/v1/trials/{a['trial_id']}/heartbeat", json=body, headers=auth(mine)).status_code == 410
    other = api.post(f"/api/v1/trials/{a['trial_id']}/heartbeat", json=body, headers=auth(theirs))
    assert other.status_code == 404 and other.json()["error"] == "not_found"


def test_no_team_token_opens_the_metrics(api: Any, world: World) -> None:
    for token in (*world.tokens.values(), world.other_admin):
        response = api.get(METRICS_ROUTE, headers=auth(token))
        assert response.status_code == 401, (token, response.text)
        assert world.study not in response.text
    # No metrics token is configured here, and the in-process client is in no metrics network.
    assert api.get(METRICS_ROUTE).status_code == 403


def test_open_routes_stay_open(api: Any) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    assert api.get("/openapi.json").status_code == 200


def dashboard_path(rule: str, study_id: int, trial_id: int) -> str:
    """One of optuna-dashboard's rules, as the path it has under /dashboard, with team A's ids."""
    values = {"study_id:int": str(study_id), "trial_id:int": str(trial_id), "plot_type": "slice", "filename:path": "bundle.js"}
    return DASHBOARD + re.sub(r"<([^>]*)>", lambda m: values.get(m.group(1), "/studies/1" if m.group(1).startswith(":re") else "abc"), rule)


def dashboard_setup(api: Any, w: World) -> tuple[list[tuple[str, str, Any]], int]:
    """(method, path, allow-list Route or None) for every route of optuna-dashboard's own app,
    and team A's study id in the dashboard."""
    import optuna_dashboard
    from optuna.storages import InMemoryStorage

    from service.api.dashboard_routes import ROUTES

    listed = api.get("/dashboard/api/studies", headers=dashboard_cookie(api, w.tokens["viewer"])).json()["study_summaries"]
    study_id = next(s["study_id"] for s in listed if s["study_name"] == f"{w.team}/{w.study}")
    allowed = {(r.method, r.rule): r for r in ROUTES}
    out = [(r.method, dashboard_path(r.rule, study_id, w.trial_id), allowed.get((r.method, r.rule))) for r in optuna_dashboard.wsgi(InMemoryStorage()).routes]
    assert len(out) >= 25
    return out, study_id


def dashboard_cookie(api: Any, token: str) -> dict[str, str]:
    login = api.post("/dashboard/login", data={"token": token}, follow_redirects=False)
    assert login.status_code == 303, login.text
    return {"Cookie": f"hpo_dashboard={login.cookies['hpo_dashboard']}"}


def test_dashboard_routes_need_a_session(api: Any, world: World) -> None:
    """No session, or a made-up one: HTML redirects to the login form and the JSON API is 401;
    a viewer's session may read but not write (403)."""
    viewer = dashboard_cookie(api, world.tokens["viewer"])
    calls, _ = dashboard_setup(api, world)
    before = snapshot(api, world)  # after the logins, which the audit trail notes
    for method, path, _route in calls:
        assert (method, path) not in DASHBOARD_OPEN
        for cookie in ({}, {"Cookie": "hpo_dashboard=made-up"}):
            response = api.request(method, path, headers=cookie, json={}, follow_redirects=False)
            if path.startswith("/dashboard/api/"):
                assert response.status_code == 401 and response.json()["error"] == "unauthorized", (method, path)
            else:
                assert response.status_code == 303 and response.headers["location"] == "/dashboard/login", (method, path)
        if method not in ("GET", "HEAD"):
            response = api.request(method, path, headers=viewer, json={}, follow_redirects=False)
            assert response.status_code == 403 and response.json()["error"] == "forbidden", (method, path)
    for method, path in DASHBOARD_OPEN:
        assert api.request(method, path, follow_redirects=False).status_code in (200, 303, 401), (method, path)
    assert snapshot(api, world) == before


def test_every_optuna_dashboard_route_is_allowed_or_refused_by_name() -> None:
    """A route a new optuna-dashboard adds is on neither list, and fails here until classified
    in service/api/dashboard_routes.py."""
    import optuna_dashboard
    from optuna.storages import InMemoryStorage

    from service.api.dashboard_routes import NOT_SERVED, ROUTES

    served = {(r.method, r.rule) for r in optuna_dashboard.wsgi(InMemoryStorage()).routes}
    allowed = {(r.method, r.rule) for r in ROUTES}
    assert served == allowed | set(NOT_SERVED), (served - allowed - set(NOT_SERVED), (allowed | set(NOT_SERVED)) - served)
    assert not allowed & set(NOT_SERVED)


def test_the_dashboard_allow_list_keeps_to_the_team(api: Any, world: World) -> None:
    """Every allow-listed route with our ids, from another team's admin: 404 (creating a study:
    409, for everyone; lists: nothing of ours). A route not on the list: 404 even for our member."""
    member, other = dashboard_cookie(api, world.tokens["member"]), dashboard_cookie(api, world.other_admin)
    calls, _ = dashboard_setup(api, world)
    before = snapshot(api, world)
    for method, path, route in calls:
        if route is None:
            if not path.startswith(("/dashboard/api/", "/dashboard/artifacts/")) and method == "GET":
                continue  # a page path: our single-page app, whatever optuna-dashboard had there
            response = api.request(method, path, headers=member, json={}, follow_redirects=False)
            assert response.status_code == 404 and response.json()["error"] == "not_found", (method, path, response.text)
            continue
        response = api.request(method, path, headers=other, json={}, follow_redirects=False)
        if "<study_id:int>" in route.rule or "<trial_id:int>" in route.rule:
            assert response.status_code == 404 and response.json()["error"] == "not_found", (route, response.text)
        elif method == "GET":
            assert response.status_code == 200, (route, response.text)
            assert world.study not in response.text and world.team not in response.text, route
        else:
            assert response.status_code == 409 and response.json()["error"] == "conflict", (route, response.text)
    assert snapshot(api, world) == before
