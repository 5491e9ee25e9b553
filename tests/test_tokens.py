"""Roles, the token API and the audit trail, in-process against the real PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from tests.conftest import auth, digits_definition, prefix_of


def sql(db_url: str, query: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        cursor = conn.execute(query, args)
        return cursor.fetchall() if cursor.description else []


def tokens_of(api: Any, admin: str) -> dict[str, dict[str, Any]]:
    response = api.get("/api/v1/tokens", headers=auth(admin))
    assert response.status_code == 200, response.text
    return {t["prefix"]: t for t in response.json()["tokens"]}


def audit_of(api: Any, admin: str, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/api/v1/audit", headers=auth(admin), params=params)
    assert response.status_code == 200, response.text
    return response.json()["events"]


def test_create_list_use_and_revoke(api: Any, make_token: Any, team: str, db_url: str) -> None:
    admin = make_token(team)
    created = api.post("/api/v1/tokens", json={"role": "member", "name": "ci", "expires_in_days": 7}, headers=auth(admin))
    assert created.status_code == 201, created.text
    body = created.json()
    token, prefix = body["token"], body["prefix"]
    assert token.startswith(prefix + "_") and prefix_of(token) == prefix
    assert body["role"] == "member" and body["name"] == "ci" and body["team"] == team and body["active"]
    assert created.headers["cache-control"] == "no-store"
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(days=6.9) < expires - datetime.now(timezone.utc) < timedelta(days=7.1)

    # Shown once: the listing never has the token or its hash; the database only the hash.
    listing = api.get("/api/v1/tokens", headers=auth(admin))
    assert token not in listing.text and token.split("_", 2)[2] not in listing.text
    assert hashlib.sha256(token.encode()).hexdigest() not in listing.text
    assert "token_hash" not in listing.text
    assert listing.json()["team"] == team
    listed = tokens_of(api, admin)[prefix]
    assert set(listed) == {"prefix", "role", "name", "created_at", "expires_at", "last_used_at", "revoked_at", "active"}
    assert listed["role"] == "member" and listed["revoked_at"] is None and listed["last_used_at"] is None
    assert sql(db_url, "SELECT token_hash FROM hpo_tokens WHERE prefix = %s", prefix) == [
        (hashlib.sha256(token.encode()).hexdigest(),)
    ]

    # The member token works for what members do.
    assert api.post("/api/v1/studies", json=digits_definition("by-member"), headers=auth(token)).status_code == 201

    assert api.delete(f"/api/v1/tokens/{prefix}", headers=auth(admin)).status_code == 204
    refused = api.get("/api/v1/studies", headers=auth(token))
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized" and "revoked" in refused.json()["detail"]
    assert refused.headers["www-authenticate"] == "Bearer"
    listed = tokens_of(api, admin)[prefix]
    assert listed["revoked_at"] is not None and not listed["active"]
    # Revoking again changes nothing (and is not audited twice).
    assert api.delete(f"/api/v1/tokens/{prefix}", headers=auth(admin)).status_code == 204
    assert [e["action"] for e in audit_of(api, admin) if e["target"] == prefix] == ["token.revoke", "token.create"]


def test_unknown_and_other_teams_tokens_are_404(api: Any, make_token: Any, team: str) -> None:
    admin, other_admin = make_token(team), make_token(team + "x")
    theirs = make_token(team + "x", "viewer")
    for prefix in ("hpo_00000000", prefix_of(theirs), "nonsense"):
        response = api.delete(f"/api/v1/tokens/{prefix}", headers=auth(admin))
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "not_found"
    assert api.get("/api/v1/presets", headers=auth(theirs)).status_code == 200
    assert prefix_of(theirs) not in tokens_of(api, admin)
    assert prefix_of(admin) not in tokens_of(api, other_admin)


def test_the_last_active_admin_token_cannot_be_revoked(api: Any, make_token: Any, team: str, db_url: str) -> None:
    first = make_token(team)
    # An expired admin token does not count as one left.
    make_token(team, "admin", expires_at=datetime.now(timezone.utc) - timedelta(days=1))
    refused = api.delete(f"/api/v1/tokens/{prefix_of(first)}", headers=auth(first))
    assert refused.status_code == 409 and refused.json()["error"] == "conflict"
    assert "last active admin" in refused.json()["detail"]

    second = api.post("/api/v1/tokens", json={"role": "admin"}, headers=auth(first)).json()["token"]
    # An admin may revoke their own token once another admin token exists.
    assert api.delete(f"/api/v1/tokens/{prefix_of(first)}", headers=auth(first)).status_code == 204
    assert api.get("/api/v1/tokens", headers=auth(first)).status_code == 401
    assert api.delete(f"/api/v1/tokens/{prefix_of(second)}", headers=auth(second)).status_code == 409
    active_admins = sql(
        db_url,
        "SELECT count(*) FROM hpo_tokens t JOIN hpo_teams m ON m.id = t.team_id "
        "WHERE m.name = %s AND role = 'admin' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
        team,
    )
    assert active_admins == [(1,)]
    # A refused revocation leaves no audit row.
    assert [e["target"] for e in audit_of(api, second) if e["action"] == "token.revoke"] == [prefix_of(first)]


def test_expired_tokens_are_401(api: Any, make_token: Any, team: str) -> None:
    expired = make_token(team, "viewer", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    response = api.get("/api/v1/studies", headers=auth(expired))
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": response.json()["detail"]}
    assert "expired" in response.json()["detail"]
    fresh = make_token(team, "viewer", expires_at=datetime.now(timezone.utc) + timedelta(hours=1))
    assert api.get("/api/v1/studies", headers=auth(fresh)).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "owner"}, "role"),
        ({}, "role"),
        ({"role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"role": "viewer", "expires_in_days": 0}, "expires_in_days"),
        ({"role": "viewer", "expires_in_days": 3, "expires_at": "2999-01-01T00:00:00Z"}, "expires_in_days, expires_at"),
        ({"role": "viewer", "expire_in_days": 3}, "expire_in_days"),
        ({"role": "viewer", "name": ""}, "name"),
    ],
)
def test_bad_token_requests_are_422_and_create_nothing(api: Any, make_token: Any, team: str, body: dict[str, Any], field: str) -> None:
    admin = make_token(team)
    before = tokens_of(api, admin)
    response = api.post("/api/v1/tokens", json=body, headers=auth(admin))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request" and field in response.json()["detail"]
    assert tokens_of(api, admin).keys() == before.keys()


def test_expires_at_is_kept(api: Any, make_token: Any, team: str) -> None:
    admin = make_token(team)
    when = "2999-01-02T03:04:05+00:00"
    created = api.post("/api/v1/tokens", json={"role": "worker", "expires_at": when}, headers=auth(admin)).json()
    assert datetime.fromisoformat(created["expires_at"]) == datetime.fromisoformat(when)
    naive = api.post("/api/v1/tokens", json={"role": "worker", "expires_at": "2999-01-02T03:04:05"}, headers=auth(admin)).json()
    assert datetime.fromisoformat(naive["expires_at"]) == datetime.fromisoformat(when)  # UTC without an offset


def test_last_used_at_is_noted_about_once_a_minute(api: Any, make_token: Any, team: str, db_url: str) -> None:
    admin, viewer = make_token(team), make_token(team, "viewer")
    prefix = prefix_of(viewer)
    assert tokens_of(api, admin)[prefix]["last_used_at"] is None
    assert api.get("/api/v1/studies", headers=auth(viewer)).status_code == 200
    first = tokens_of(api, admin)[prefix]["last_used_at"]
    assert first is not None
    for _ in range(3):
        api.get("/api/v1/presets", headers=auth(viewer))
    assert tokens_of(api, admin)[prefix]["last_used_at"] == first  # no write per request
    # A minute later the next request notes the use again.
    sql(db_url, "UPDATE hpo_tokens SET last_used_at = last_used_at - interval '2 minutes' WHERE prefix = %s", prefix)
    api.get("/api/v1/presets", headers=auth(viewer))
    assert datetime.fromisoformat(tokens_of(api, admin)[prefix]["last_used_at"]) > datetime.fromisoformat(first)


def test_a_wrong_role_is_403_naming_the_roles(api: Any, make_token: Any, team: str) -> None:
    viewer, worker, member = make_token(team, "viewer"), make_token(team, "worker"), make_token(team, "member")
    response = api.post("/api/v1/studies", json=digits_definition("nope"), headers=auth(viewer))
    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden",
        "detail": "POST /api/v1/studies needs role member or admin; this token is viewer",
    }
    response = api.get("/api/v1/studies/x", headers=auth(worker))
    assert response.json()["detail"] == "GET /api/v1/studies/{name} needs role viewer, member or admin; this token is worker"
    response = api.get("/api/v1/tokens", headers=auth(member))
    assert response.json()["detail"] == "GET /api/v1/tokens needs role admin; this token is member"
    response = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(member))
    assert response.json()["detail"] == "POST /api/v1/trials/claim needs role worker or admin; this token is member"


def test_roles_do_their_jobs(api: Any, make_token: Any, team: str) -> None:
    member, worker, viewer = make_token(team, "member"), make_token(team, "worker"), make_token(team, "viewer")
    assert api.post("/api/v1/studies", json=digits_definition("jobs"), headers=auth(member)).status_code == 201
    a = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(worker)).json()
    lease = {"lease_id": a["lease_id"]}
    base = f"/api/v1/trials/{a['trial_id']}"
    assert api.post(f"{base}/report", json={**lease, "step": 1, "value": 0.5}, headers=auth(worker)).status_code == 200
    assert api.post(f"{base}/heartbeat", json=lease, headers=auth(worker)).status_code == 200
    checkpoint = api.post(
        f"{base}/checkpoint", params={**lease, "step": 2, "value": 0.4}, content=b"state",
        headers={**auth(worker), "Content-Type": "application/octet-stream"},
    )
    assert checkpoint.status_code == 200, checkpoint.text
    assert api.get(f"{base}/checkpoint", params=lease, headers=auth(worker)).status_code == 204  # not a retry
    assert api.post(f"{base}/finish", json={**lease, "state": "complete", "value": 0.4}, headers=auth(worker)).status_code == 200
    trials = api.get("/api/v1/studies/jobs/trials", headers=auth(viewer)).json()["trials"]
    assert trials[0]["state"] == "COMPLETE"
    assert api.get("/api/v1/studies/jobs", headers=auth(viewer)).json()["counts"]["COMPLETE"] == 1
    assert api.post("/api/v1/studies/jobs/stop", headers=auth(member)).json()["state"] == "stopped"
    assert api.delete("/api/v1/studies/jobs", headers=auth(member)).status_code == 204


def test_audit_trail(api: Any, make_token: Any, team: str, db_url: str) -> None:
    admin, member = make_token(team), make_token(team, "member")
    before = {e["id"] for e in audit_of(api, admin)}
    assert api.post("/api/v1/studies", json=digits_definition("audited"), headers=auth(member)).status_code == 201
    # A refused action leaves no trace: the duplicate is 409 and writes no event.
    assert api.post("/api/v1/studies", json=digits_definition("audited"), headers=auth(member)).status_code == 409
    assert api.post("/api/v1/studies/audited/stop", headers=auth(member)).status_code == 200
    assert api.delete("/api/v1/studies/audited", headers=auth(admin)).status_code == 204
    made = api.post("/api/v1/tokens", json={"role": "viewer", "name": "dash"}, headers=auth(admin)).json()
    assert api.delete(f"/api/v1/tokens/{made['prefix']}", headers=auth(admin)).status_code == 204

    events = [e for e in audit_of(api, admin) if e["id"] not in before]
    assert [(e["action"], e["target"], e["actor"], e["role"]) for e in events] == [
        ("token.revoke", made["prefix"], prefix_of(admin), "admin"),
        ("token.create", made["prefix"], prefix_of(admin), "admin"),
        ("study.delete", "audited", prefix_of(admin), "admin"),
        ("study.stop", "audited", prefix_of(member), "member"),
        ("study.create", "audited", prefix_of(member), "member"),
    ]
    assert events[1]["detail"] == {"role": "viewer", "name": "dash", "expires_at": None}
    assert events[4]["detail"]["optuna_name"] == f"{team}/audited"
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert times == sorted(times, reverse=True)
    assert [e["id"] for e in audit_of(api, admin, limit=2)] == [e["id"] for e in events[:2]]
    assert api.get("/api/v1/audit", params={"limit": 0}, headers=auth(admin)).status_code == 422
    # Tokens made on the server host are in the trail too, without an actor.
    server_made = [e for e in audit_of(api, admin) if e["target"] == prefix_of(member)]
    assert [(e["action"], e["actor"], e["detail"]["via"]) for e in server_made] == [("token.create", None, "server")]
    # Another team sees none of it.
    other = make_token(team + "x")
    assert not [e for e in audit_of(api, other) if "audited" in str(e) or e["target"] == made["prefix"]]


def test_existing_tokens_become_admins_in_the_migration(new_database: Any) -> None:
    """A database from before roles (0002) with a token in it: after `hpo migrate` that token
    is an admin with no expiry."""
    from alembic import command
    from sqlalchemy import create_engine

    from service.migrate import alembic_config, migrate
    from service.settings import Settings

    url = new_database()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
            conn.commit()
    finally:
        engine.dispose()
    sql(url, "INSERT INTO hpo_teams (name) VALUES ('old')")
    sql(url, "INSERT INTO hpo_tokens (team_id, token_hash, prefix) SELECT id, 'h', 'hpo_0ld0ld00' FROM hpo_teams")
    migrate(url, Settings(database_url=url))
    assert sql(url, "SELECT role, expires_at, revoked_at FROM hpo_tokens") == [("admin", None, None)]
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(url, "UPDATE hpo_tokens SET role = 'owner'")


def test_a_worker_whose_token_is_refused_exits_instead_of_retrying(live_server: Any, make_token: Any, team: str) -> None:
    from tests.conftest import start_worker

    worker = start_worker(live_server.url, make_token(team, role="viewer"))
    try:
        assert worker.wait(timeout=120) == 3
    finally:
        if worker.poll() is None:
            worker.kill()
