"""The built-in optuna-dashboard at /dashboard: login, session cookie, one team's studies only,
viewers read but do not write."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import auth, digits_definition, prefix_of

COOKIE = "hpo_dashboard"


def login(api: Any, token: str) -> dict[str, str]:
    """Logs in through the form; the Cookie header for the session (the test client would not
    send a Secure cookie back over http by itself)."""
    response = api.post("/dashboard/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard/"
    return {"Cookie": f"{COOKIE}={response.cookies[COOKIE]}"}


@pytest.fixture(scope="module")
def teams(api: Any, make_token: Any) -> dict[str, Any]:
    a, b = f"a{uuid.uuid4().hex[:10]}", f"b{uuid.uuid4().hex[:10]}"
    out: dict[str, Any] = {"a": a, "b": b, "tokens": {role: make_token(a, role) for role in ("admin", "member", "viewer", "worker")}}
    out["b_admin"] = make_token(b)
    for team, token in ((a, out["tokens"]["member"]), (b, out["b_admin"])):
        name = f"{team}-study"
        assert api.post("/api/v1/studies", json=digits_definition(name), headers=auth(token)).status_code == 201
    claimed = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(out["b_admin"])).json()
    out["b_trial"] = claimed["trial_id"]
    return out


def study_ids(api: Any, cookie: dict[str, str]) -> dict[str, int]:
    response = api.get("/dashboard/api/studies", headers=cookie)
    assert response.status_code == 200, response.text
    return {s["study_name"]: s["study_id"] for s in response.json()["study_summaries"]}


def test_without_a_session_pages_redirect_and_the_api_is_401(api: Any) -> None:
    page = api.get("/dashboard/login")
    assert page.status_code == 200 and '<form method="post" action="/dashboard/login">' in page.text
    for path in ("/dashboard/", "/dashboard/studies/1", "/dashboard/static/bundle.js"):
        response = api.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/dashboard/login", path
    for method, path in (("GET", "/dashboard/api/studies"), ("DELETE", "/dashboard/api/studies/1"), ("GET", "/dashboard/api/meta")):
        response = api.request(method, path, follow_redirects=False)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"] == "unauthorized"
    garbage = api.get("/dashboard/api/studies", headers={"Cookie": f"{COOKIE}=not-a-session"})
    assert garbage.status_code == 401


def test_login_refuses_bad_and_worker_tokens(api: Any, teams: dict[str, Any], make_token: Any) -> None:
    assert api.post("/dashboard/login", data={"token": "hpo_00000000_nope"}).status_code == 401
    assert api.post("/dashboard/login", data={"token": ""}).status_code == 401
    worker = api.post("/dashboard/login", data={"token": teams["tokens"]["worker"]}, follow_redirects=False)
    assert worker.status_code == 403 and "this token is worker" in worker.text
    assert COOKIE not in worker.cookies


def test_the_cookie_is_a_server_side_session_not_the_token(api: Any, teams: dict[str, Any]) -> None:
    token = teams["tokens"]["viewer"]
    response = api.post("/dashboard/login", data={"token": token}, follow_redirects=False)
    header = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "secure", "samesite", "path"} <= attributes
    assert "samesite=strict" in header.lower() and "path=/dashboard" in header.lower()
    value = response.cookies[COOKIE]
    assert token not in header and token.split("_")[-1] not in value and len(value) >= 40
    # The audit trail notes the login.
    events = api.get("/api/v1/audit", headers=auth(teams["tokens"]["admin"])).json()["events"]
    assert any(e["action"] == "dashboard.login" and e["target"] == prefix_of(token) for e in events)


def test_a_team_sees_only_its_own_studies(api: Any, teams: dict[str, Any]) -> None:
    mine = login(api, teams["tokens"]["viewer"])
    ids = study_ids(api, mine)
    assert f"{teams['a']}/{teams['a']}-study" in ids
    assert not any(name.startswith(teams["b"] + "/") for name in ids)
    assert all(name.startswith(teams["a"] + "/") for name in ids)
    own = ids[f"{teams['a']}/{teams['a']}-study"]
    assert api.get(f"/dashboard/api/studies/{own}", headers=mine).status_code == 200

    theirs = study_ids(api, login(api, teams["b_admin"]))[f"{teams['b']}/{teams['b']}-study"]
    member = login(api, teams["tokens"]["member"])
    for method, path in (
        ("GET", f"/dashboard/api/studies/{theirs}"),
        ("GET", f"/dashboard/api/studies/{theirs}/param_importances"),
        ("GET", f"/dashboard/csv/{theirs}"),
        ("DELETE", f"/dashboard/api/studies/{theirs}"),
        ("PUT", f"/dashboard/api/studies/{theirs}/note"),
        ("POST", f"/dashboard/api/trials/{teams['b_trial']}/user-attrs"),
        ("POST", f"/dashboard/api/trials/{teams['b_trial']}/tell"),
        ("PUT", f"/dashboard/api/studies/{own}/{teams['b_trial']}/note"),
    ):
        response = api.request(method, path, headers=member, json={})
        assert response.status_code == 404, (method, path, response.text)
    # Their study and trial are untouched.
    trials = api.get(f"/api/v1/studies/{teams['b']}-study/trials", headers=auth(teams["b_admin"])).json()["trials"]
    assert trials[0]["state"] == "RUNNING"


def test_viewers_cannot_write_members_can(api: Any, teams: dict[str, Any], make_token: Any) -> None:
    member_token = teams["tokens"]["member"]
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    assert api.post("/api/v1/studies", json=digits_definition(name), headers=auth(member_token)).status_code == 201
    viewer = login(api, teams["tokens"]["viewer"])
    study_id = study_ids(api, viewer)[f"{teams['a']}/{name}"]
    for method, path in (
        ("DELETE", f"/dashboard/api/studies/{study_id}"),
        ("PUT", f"/dashboard/api/studies/{study_id}/note"),
        ("POST", f"/dashboard/api/studies/{study_id}/rename"),
    ):
        response = api.request(method, path, headers=viewer, json={})
        assert response.status_code == 403, (method, path)
        assert response.json()["error"] == "forbidden" and "this token is viewer" in response.json()["detail"]
    assert api.get(f"/api/v1/studies/{name}", headers=auth(member_token)).status_code == 200

    member = login(api, member_token)
    note = api.put(f"/dashboard/api/studies/{study_id}/note", headers=member, json={"version": 1, "body": "hello"})
    assert note.status_code in (200, 204), note.text
    renamed = api.post(f"/dashboard/api/studies/{study_id}/rename", headers=member, json={"study_name": "x"})
    assert renamed.status_code == 409
    assert api.delete(f"/dashboard/api/studies/{study_id}", headers=member).status_code == 204
    # Deleted from ours too, with the audit trail saying who did it.
    assert api.get(f"/api/v1/studies/{name}", headers=auth(member_token)).status_code == 404
    events = api.get("/api/v1/audit", headers=auth(teams["tokens"]["admin"])).json()["events"]
    assert any(e["action"] == "study.delete" and e["target"] == name and e["actor"] == prefix_of(member_token) for e in events)


def test_the_page_loads_the_dashboard_from_under_dashboard(api: Any, teams: dict[str, Any]) -> None:
    cookie = login(api, teams["tokens"]["viewer"])
    for path in ("/dashboard/", "/dashboard/studies/1"):
        page = api.get(path, headers=cookie)
        assert page.status_code == 200 and 'src="/dashboard/static/bundle.js"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
    assert api.get("/dashboard/static/bundle.js", headers=cookie).status_code == 200
    assert "/dashboard" in api.get("/dashboard/static/hpo-prefix.js", headers=cookie).text
    assert api.get("/dashboard/api/meta", headers=cookie).status_code == 200


def test_logout_and_revocation_end_the_session(api: Any, teams: dict[str, Any], make_token: Any) -> None:
    cookie = login(api, teams["tokens"]["viewer"])
    out = api.post("/dashboard/logout", headers=cookie, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert api.get("/dashboard/api/studies", headers=cookie).status_code == 401

    spare = make_token(teams["a"], "viewer")
    cookie = login(api, spare)
    assert api.get("/dashboard/api/studies", headers=cookie).status_code == 200
    assert api.delete(f"/api/v1/tokens/{prefix_of(spare)}", headers=auth(teams["tokens"]["admin"])).status_code == 204
    assert api.get("/dashboard/api/studies", headers=cookie).status_code == 401
