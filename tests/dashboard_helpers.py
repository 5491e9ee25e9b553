"""Shared by the dashboard tests that attack a real server (tests/test_dashboard_hardening.py,
tests/test_audit_trail.py): logging in through the form, finding a study's dashboard id, and
reading the database behind the server's back."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg

from tests.conftest import auth, digits_definition

COOKIE = "hpo_dashboard"


def login(client: httpx.Client, token: str, **headers: str) -> dict[str, str]:
    """Logs in through the form; the Cookie header for the session (httpx would not send a
    Secure cookie back over http by itself)."""
    response = client.post("/dashboard/login", data={"token": token}, headers=headers, follow_redirects=False)
    assert response.status_code == 303, response.text
    return {"Cookie": f"{COOKIE}={response.cookies[COOKIE]}"}


def dashboard_studies(client: httpx.Client, cookie: dict[str, str]) -> dict[str, int]:
    """Optuna study name -> study id, as the team's dashboard lists them."""
    response = client.get("/dashboard/api/studies", headers=cookie)
    assert response.status_code == 200, response.text
    return {s["study_name"]: s["study_id"] for s in response.json()["study_summaries"]}


def rest_study(client: httpx.Client, token: str, team: str, cookie: dict[str, str], **overrides: Any) -> tuple[str, int]:
    """A new study made through the REST API: (its name, its dashboard id)."""
    name = f"s-{uuid.uuid4().hex[:8]}"
    response = client.post("/api/v1/studies", json=digits_definition(name, **overrides), headers=auth(token))
    assert response.status_code == 201, response.text
    return name, dashboard_studies(client, cookie)[f"{team}/{name}"]


def claim(client: httpx.Client, worker: str, name: str) -> dict[str, Any]:
    response = client.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": [name]}, headers=auth(worker))
    assert response.status_code == 200, response.text
    return response.json()


def sql(db_url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def audit_events(client: httpx.Client, admin: str, limit: int = 1000) -> list[dict[str, Any]]:
    response = client.get("/api/v1/audit", params={"limit": limit}, headers=auth(admin))
    assert response.status_code == 200, response.text
    return response.json()["events"]


def assert_error(response: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    """Our error shape, {"error", "detail"}, with this status (and code)."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.request.method, response.request.url, response.status_code, response.text)
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    if code is not None:
        assert body["error"] == code, body
    return body
