"""The dashboard attacks of the security review (docs: /work/shared/reviews/security-2026-12.md,
findings 2, 7, 13, 15 and 16), replayed against a real `hpo serve`: each one is refused with a 4xx
in our error shape and changes nothing, or goes through our own code and is audited."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import optuna
import pytest

from tests.conftest import LiveServer, auth, prefix_of
from tests.dashboard_helpers import assert_error, audit_events, claim, dashboard_studies, login, rest_study, sql

# What optuna-dashboard's trailing-slash hook and Bottle's `$` (which matches before a final
# newline) used to let past our guards, and the other control characters of the same kind.
SLASHES = ("/", "//", "///")
CONTROL = ("%0A", "/%0A", "%0D", "%00", "%09", "%0A/", "%7F")


@dataclass
class World:
    team: str
    other: str
    tokens: dict[str, str]
    other_admin: str
    member: dict[str, str]  # the member's dashboard Cookie header
    viewer: dict[str, str]
    other_member: dict[str, str]


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def world(client: httpx.Client, make_token: Any) -> World:
    team, other = f"h{uuid.uuid4().hex[:10]}", f"o{uuid.uuid4().hex[:10]}"
    tokens = {role: make_token(team, role) for role in ("admin", "member", "viewer", "worker")}
    other_admin = make_token(other)
    return World(
        team=team,
        other=other,
        tokens=tokens,
        other_admin=other_admin,
        member=login(client, tokens["member"]),
        viewer=login(client, tokens["viewer"]),
        other_member=login(client, make_token(other, "member")),
    )


def consistent(client: httpx.Client, w: World, name: str, study_id: int) -> None:
    """The REST record and the Optuna study both exist, under the same id and name."""
    assert client.get("/api/v1/studies", headers=auth(w.tokens["member"])).status_code == 200
    assert client.get(f"/api/v1/studies/{name}", headers=auth(w.tokens["member"])).status_code == 200
    assert dashboard_studies(client, w.member).get(f"{w.team}/{name}") == study_id


# --------------------------------------------------------------------------- finding 2


@pytest.mark.parametrize("suffix", SLASHES)
def test_a_delete_with_trailing_slashes_goes_through_our_delete(client: httpx.Client, world: World, suffix: str) -> None:
    """Before: optuna-dashboard deleted the Optuna study itself, with no audit event, and left our
    record dangling, so GET /api/v1/studies answered 404 for the whole team."""
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    response = client.delete(f"/dashboard/api/studies/{study_id}{suffix}", headers=world.member)
    assert response.status_code == 204, response.text
    member = auth(world.tokens["member"])
    assert client.get("/api/v1/studies", headers=member).status_code == 200
    assert name not in [s["name"] for s in client.get("/api/v1/studies", headers=member).json()["studies"]]
    assert f"{world.team}/{name}" not in dashboard_studies(client, world.member)
    events = audit_events(client, world.tokens["admin"])
    assert any(e["action"] == "study.delete" and e["target"] == name and e["actor"] == prefix_of(world.tokens["member"]) for e in events)


@pytest.mark.parametrize("suffix", CONTROL)
def test_control_characters_in_the_path_are_refused(client: httpx.Client, world: World, suffix: str) -> None:
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    for method, path, body in (
        ("DELETE", f"/dashboard/api/studies/{study_id}{suffix}", None),
        ("POST", f"/dashboard/api/studies/{study_id}/rename{suffix}", {"study_name": f"{world.team}/renamed"}),
        ("POST", f"/dashboard/api/studies{suffix}", {"study_name": f"{world.team}/made-{uuid.uuid4().hex[:6]}", "directions": ["minimize"]}),
        ("GET", f"/dashboard/api/studies/{study_id}{suffix}", None),
    ):
        response = client.request(method, path, headers=world.member, json=body)
        assert_error(response, (400, 404))
    consistent(client, world, name, study_id)
    assert not any("renamed" in n or "/made-" in n for n in dashboard_studies(client, world.member))


@pytest.mark.parametrize("suffix", ("", *SLASHES, "%0A"))
def test_rename_stays_with_the_rest_api(client: httpx.Client, world: World, suffix: str) -> None:
    """Before: `/rename/` and `/rename%0A` moved the study to a new name and id, trials copied
    with new trial ids, and left our record pointing at nothing."""
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    body = {"study_name": f"{world.team}/renamed-{uuid.uuid4().hex[:6]}"}
    response = client.post(f"/dashboard/api/studies/{study_id}/rename{suffix}", headers=world.member, json=body)
    assert_error(response, (400, 404) if suffix == "%0A" else 409)
    consistent(client, world, name, study_id)
    assert body["study_name"] not in dashboard_studies(client, world.member)


@pytest.mark.parametrize("suffix", ("", *SLASHES, "%0A"))
def test_create_stays_with_the_rest_api(client: httpx.Client, world: World, suffix: str) -> None:
    """Before: `POST /api/studies/` made an Optuna study outside the REST API, squatting the name."""
    name = f"dash-made-{uuid.uuid4().hex[:6]}"
    body = {"study_name": f"{world.team}/{name}", "directions": ["minimize"]}
    response = client.post(f"/dashboard/api/studies{suffix}", headers=world.member, json=body)
    assert_error(response, (400, 404) if suffix == "%0A" else 409)
    assert body["study_name"] not in dashboard_studies(client, world.member)
    # The name is not squatted: the REST API can still create it.
    from tests.conftest import digits_definition

    assert client.post("/api/v1/studies", json=digits_definition(name), headers=auth(world.tokens["member"])).status_code == 201


def test_other_teams_names_and_ids_are_4xx_not_500(client: httpx.Client, world: World) -> None:
    """Before: create and rename with another team's prefix answered 500 (TeamStorage's
    ValueError, then optuna-dashboard's UnboundLocalError)."""
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    theirs = {"study_name": f"{world.other}/stolen", "directions": ["minimize"]}
    assert_error(client.post("/dashboard/api/studies", headers=world.member, json=theirs), 409, "conflict")
    assert_error(client.post(f"/dashboard/api/studies/{study_id}/rename", headers=world.member, json=theirs), 409, "conflict")
    # Our study, from the other team's side: as if it did not exist.
    for method, path in (
        ("POST", f"/dashboard/api/studies/{study_id}/rename"),
        ("POST", f"/dashboard/api/studies/{study_id}/rename/"),
        ("DELETE", f"/dashboard/api/studies/{study_id}/"),
        ("DELETE", f"/dashboard/api/studies/{study_id}//"),
    ):
        assert_error(client.request(method, path, headers=world.other_member, json=theirs), 404, "not_found")
    consistent(client, world, name, study_id)
    assert f"{world.other}/stolen" not in dashboard_studies(client, world.other_member)


def test_a_route_optuna_dashboard_does_not_serve_or_we_do_not_accept_is_refused(client: httpx.Client, world: World) -> None:
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    for method, path in (
        ("POST", "/dashboard/incompatible-rdb-schema"),
        ("POST", "/dashboard/api/llm/trial_filter_query"),
        ("GET", f"/dashboard/artifacts/{study_id}/abc"),
        ("POST", f"/dashboard/api/artifacts/{study_id}"),
        ("PATCH", f"/dashboard/api/studies/{study_id}"),
        ("GET", f"/dashboard/api/studies/{study_id}/%2E%2E/{study_id}"),
        ("GET", "/dashboard/static/%2E%2E/_app.py"),
        ("GET", "/dashboard/static/..%2F_app.py"),
        ("GET", "/dashboard/api/studies/\u0662"),  # an Arabic-Indic digit: int() would take it
        ("GET", f"/dashboard/api/studies/0{study_id}"),
        ("GET", "/dashboard/api/nothing"),
    ):
        assert_error(client.request(method, path, headers=world.member), 404, "not_found")
    consistent(client, world, name, study_id)


# --------------------------------------------------------------------------- finding 7


NON_FINITE_BODIES = (
    '{"state": "complete", "values": ["nan"]}',
    '{"state": "complete", "values": ["-inf"]}',
    '{"state": "complete", "values": ["inf"]}',
    '{"state": "complete", "values": [" NaN "]}',
    '{"state": "complete", "values": ["Infinity"]}',
    '{"state": "complete", "values": ["1e999"]}',
    '{"state": "complete", "values": [1e999]}',
    '{"state": "complete", "values": [-1e999]}',
    '{"state": "complete", "values": [NaN]}',
    '{"state": "complete", "values": [-Infinity]}',
)


def test_a_non_finite_tell_is_refused_and_changes_nothing(client: httpx.Client, world: World) -> None:
    """Before: 204, the trial COMPLETE with NaN, and the study's dashboard page answered 500 from
    then on (`Should not detect nan value`); REST's best_trial.value became null."""
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    trial = claim(client, world.tokens["worker"], name)
    headers = {**world.member, "Content-Type": "application/json"}
    for body in NON_FINITE_BODIES:
        response = client.post(f"/dashboard/api/trials/{trial['trial_id']}/tell", headers=headers, content=body)
        assert_error(response, 422, "invalid_request")
        assert "finite" in response.json()["detail"], response.text
    trials = client.get(f"/api/v1/studies/{name}/trials", headers=auth(world.tokens["member"])).json()["trials"]
    assert [t["state"] for t in trials] == ["RUNNING"]
    assert client.get(f"/dashboard/api/studies/{study_id}", headers=world.member).status_code == 200
    # A finite value is still told.
    ok = client.post(f"/dashboard/api/trials/{trial['trial_id']}/tell", headers=world.member, json={"state": "complete", "values": [0.25]})
    assert ok.status_code == 204, ok.text
    summary = client.get(f"/api/v1/studies/{name}", headers=auth(world.tokens["member"])).json()
    assert summary["best_trial"]["value"] == 0.25


def test_the_study_page_survives_a_nan_already_stored(client: httpx.Client, world: World, db_url: str) -> None:
    """A NaN written into Optuna's tables by an older version (or by hand): the page shows that
    trial as failed, as Optuna itself treats an objective that returned NaN."""
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member, direction="maximize")
    nan_trial = claim(client, world.tokens["worker"], name)["trial_id"]
    good = claim(client, world.tokens["worker"], name)["trial_id"]
    assert client.post(f"/dashboard/api/trials/{good}/tell", headers=world.member, json={"state": "complete", "values": [0.5]}).status_code == 204
    sql(db_url, "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (%(t)s, 0, 'NaN', 'FINITE')", t=nan_trial)
    sql(db_url, "UPDATE trials SET state = 'COMPLETE', datetime_complete = now() WHERE trial_id = %(t)s", t=nan_trial)

    page = client.get(f"/dashboard/api/studies/{study_id}", headers=world.member)
    assert page.status_code == 200, page.text
    by_id = {t["trial_id"]: t for t in page.json()["trials"]}
    assert by_id[nan_trial]["state"] == "Fail" and by_id[good]["state"] == "Complete"
    assert [t["trial_id"] for t in page.json()["best_trials"]] == [good]
    assert client.get(f"/dashboard/csv/{study_id}", headers=world.member).status_code == 200
    # Still NaN in storage: the dashboard's view changed, not the data.
    assert math.isnan(sql(db_url, "SELECT value FROM trial_values WHERE trial_id = %(t)s", t=nan_trial)[0][0])


# --------------------------------------------------------------------------- finding 13


def test_what_used_to_be_500_is_a_4xx_in_our_shape(client: httpx.Client, world: World) -> None:
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    trial = claim(client, world.tokens["worker"], name)["trial_id"]
    m = world.member
    cases = [
        ("POST", "/dashboard/api/trials/-1/tell", {"json": {"state": "fail"}}, 404),
        ("POST", "/dashboard/api/trials/99999999999/tell", {"json": {"state": "fail"}}, 404),
        ("GET", "/dashboard/api/studies/99999999999", {}, 404),
        ("GET", f"/dashboard/api/studies/{study_id}?after=x", {}, 400),
        ("GET", f"/dashboard/api/studies/{study_id}/plot/contour", {}, 404),
        ("GET", f"/dashboard/api/studies/{study_id}/plot/slice", {}, 404),
    ]
    for path in (f"/dashboard/api/trials/{trial}/tell", f"/dashboard/api/trials/{trial}/user-attrs"):
        cases += [
            ("POST", path, {"content": '{"state": "fail", "user_attrs": {"a": 1}}', "headers": {"Content-Type": "text/plain"}}, 415),
            ("POST", path, {"content": "a=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415),
            ("POST", path, {"content": "{not json", "headers": {"Content-Type": "application/json"}}, 400),
            ("POST", path, {"content": "[1, 2]", "headers": {"Content-Type": "application/json"}}, 422),
            ("POST", path, {"content": "[" * 100000 + "]" * 100000, "headers": {"Content-Type": "application/json"}}, (400, 422)),
        ]
    for path in (f"/dashboard/api/studies/{study_id}/note", f"/dashboard/api/studies/{study_id}/{trial}/note"):
        cases += [
            ("PUT", path, {"content": '{"version": 1, "body": "x"}', "headers": {"Content-Type": "text/plain"}}, 415),
            ("PUT", path, {"content": "{", "headers": {"Content-Type": "application/json"}}, 400),
            ("PUT", path, {"json": {"version": "one", "body": "x"}}, 422),
            ("PUT", path, {"json": {"version": 1, "body": "nul \u0000 here"}}, 422),
        ]
    cases.append(("POST", f"/dashboard/api/trials/{trial}/user-attrs", {"json": {"user_attrs": {"k\u0000": 1}}}, 422))
    for method, path, kwargs, status in cases:
        headers = {**m, **kwargs.pop("headers", {})}
        response = client.request(method, path, headers=headers, **kwargs)
        assert_error(response, status)
        assert "Traceback" not in response.text
    trials = client.get(f"/api/v1/studies/{name}/trials", headers=auth(world.tokens["member"])).json()["trials"]
    assert [t["state"] for t in trials] == ["RUNNING"]
    consistent(client, world, name, study_id)
    meta = client.get("/dashboard/api/meta", headers=m).json()
    assert meta["plotlypy_is_available"] is False


# --------------------------------------------------------------------------- finding 16


def test_login_and_logout_refuse_a_foreign_origin(client: httpx.Client, world: World, live_server: LiveServer) -> None:
    """Before: a page on any site could log the victim into the attacker's team (login CSRF),
    or log them out."""
    token = world.tokens["viewer"]
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Referer": "http://evil.example/page"}):
        response = client.post("/dashboard/login", data={"token": token}, headers=headers, follow_redirects=False)
        assert_error(response, 403, "forbidden")
        assert "set-cookie" not in response.headers
    # The page's own origin (what a browser sends), and none at all (curl), log in.
    login(client, token, Origin=live_server.url)
    login(client, token, Referer=live_server.url + "/dashboard/login")
    cookie = login(client, token)
    out = client.post("/dashboard/logout", headers={**cookie, "Origin": "http://evil.example"}, follow_redirects=False)
    assert_error(out, 403, "forbidden")
    assert client.get("/dashboard/api/studies", headers=cookie).status_code == 200
    out = client.post("/dashboard/logout", headers={**cookie, "Origin": live_server.url}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/dashboard/api/studies", headers=cookie).status_code == 401


def test_dashboard_writes_refuse_a_foreign_origin(client: httpx.Client, world: World, live_server: LiveServer) -> None:
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    note = {"version": 1, "body": "from evil"}
    response = client.put(f"/dashboard/api/studies/{study_id}/note", headers={**world.member, "Origin": "http://evil.example"}, json=note)
    assert_error(response, 403, "forbidden")
    assert client.get(f"/dashboard/api/studies/{study_id}", headers=world.member).json()["note"]["body"] == ""
    response = client.put(f"/dashboard/api/studies/{study_id}/note", headers={**world.member, "Origin": live_server.url}, json=note)
    assert response.status_code == 204, response.text


def test_the_login_page_cannot_be_framed(client: httpx.Client) -> None:
    for response in (client.get("/dashboard/login"), client.post("/dashboard/login", data={"token": "nope"})):
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"


def test_the_dashboard_page_cannot_be_framed(client: httpx.Client, world: World) -> None:
    page = client.get("/dashboard/", headers=world.viewer)
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


# --------------------------------------------------------------------------- TeamStorage (defence in depth, finding 15)


@pytest.fixture(scope="module")
def storages(db_url: str, settings: Any) -> Iterator[tuple[Any, Any]]:
    from service.db.session import make_engine
    from service.engine.storage import make_storage

    engine = make_engine(db_url, settings, application_name="hpo-tests")
    yield make_storage(db_url, settings), engine
    engine.dispose()


def test_team_storage_creates_nothing_and_deletes_only_what_the_rest_api_does_not_own(
    client: httpx.Client, world: World, storages: tuple[Any, Any]
) -> None:
    from service.engine.team_storage import TeamStorage

    inner, engine = storages
    mine = TeamStorage(inner, world.team, engine)
    name, study_id = rest_study(client, world.tokens["member"], world.team, world.member)
    with pytest.raises(Exception) as refused:
        mine.create_new_study([optuna.study.StudyDirection.MINIMIZE], f"{world.team}/side-door")
    assert not isinstance(refused.value, KeyError)
    with pytest.raises(Exception):
        mine.delete_study(study_id)
    consistent(client, world, name, study_id)
    # A study made outside the REST API (plain Optuna, the team's prefix) is the dashboard's to delete.
    loose = optuna.create_study(storage=inner, study_name=f"{world.team}/loose-{uuid.uuid4().hex[:6]}")
    mine.delete_study(loose._study_id)
    assert loose.study_name not in dashboard_studies(client, world.member)


def test_team_storage_lists_the_team_without_reading_every_team(client: httpx.Client, world: World, storages: tuple[Any, Any]) -> None:
    """Before: every dashboard poll of a study read all teams' studies (get_all_studies)."""
    from service.engine.team_storage import TeamStorage

    inner, engine = storages
    rest_study(client, world.tokens["member"], world.team, world.member)
    rest_study(client, world.other_admin, world.other, world.other_member)
    expected = sorted((s for s in inner.get_all_studies() if s.study_name.startswith(world.team + "/")), key=lambda s: s._study_id)

    class NoFullScan:
        def __getattr__(self, attr: str) -> Any:
            if attr == "get_all_studies":
                raise AssertionError("TeamStorage read every team's studies")
            return getattr(inner, attr)

    got = TeamStorage(NoFullScan(), world.team, engine).get_all_studies()  # type: ignore[arg-type]
    assert [s._study_id for s in got] == [s._study_id for s in expected] and got
    for a, b in zip(got, expected):
        assert (a.study_name, a.directions, a.user_attrs, a.system_attrs) == (b.study_name, b.directions, b.user_attrs, b.system_attrs)
        assert isinstance(a, optuna.study._frozen.FrozenStudy)
