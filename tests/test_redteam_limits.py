"""The review's findings 14-16 against a real `hpo serve`: refused tokens are limited per client,
drawing plots and reports takes turns, a body that stops arriving is answered, redirects do not
come from the Host header, and the API's documentation can be taken off the server."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import LiveServer, auth, digits_definition

LIMIT = 20


@pytest.fixture(scope="module")
def server(db_url: str) -> Iterator[LiveServer]:
    s = LiveServer(db_url, HPO_BODY_TIMEOUT_SECONDS="1", HPO_API_DOCS="false")
    yield s
    s.stop()


def test_refused_tokens_are_limited_per_client(db_url: str, make_token: Any, team: str) -> None:
    """The review's 600 random tokens in 14 s: past the limit, 429 without a database look-up."""
    s = LiveServer(db_url, HPO_AUTH_FAILURES_PER_MINUTE=str(LIMIT))
    try:
        answers = [httpx.get(f"{s.url}/api/v1/studies", headers=auth(f"hpo_{uuid.uuid4().hex[:8]}_guess")).status_code for _ in range(LIMIT + 5)]
        assert answers[:LIMIT] == [401] * LIMIT and answers[LIMIT:] == [429] * 5, answers
        refused = httpx.get(f"{s.url}/api/v1/studies", headers=auth("hpo_00000000_guess"))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert set(refused.json()) == {"error", "detail"}
        # Dashboard logins count against the same address.
        login = httpx.post(f"{s.url}/dashboard/login", data={"token": "hpo_00000000_guess"})
        assert login.status_code == 429
        # Requests without credentials are not held up.
        assert httpx.get(f"{s.url}/healthz").status_code == 200
    finally:
        s.stop()


def test_drawing_takes_turns(db_url: str, make_token: Any, team: str) -> None:
    """Plots and reports wait for one of render_concurrency turns, then answer 503: a viewer
    asking for 32 reports at once cannot take the process's CPU from every other route."""
    settings = Settings(database_url=db_url, render_concurrency=1, render_wait_seconds=0, auth_failures_per_minute=0)
    token = make_token(team, "member")
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        api.post("/api/v1/studies", json=digits_definition("drawn"), headers=auth(token)).raise_for_status()
        renders = api.app.state.runtime.renders
        assert renders.acquire(timeout=5)  # the one turn, taken by a drawing in progress
        try:
            for path in ("/api/v1/studies/drawn/plots/history", "/api/v1/studies/drawn/report"):
                busy = api.get(path, headers=auth(token))
                assert busy.status_code == 503 and busy.headers["retry-after"], busy.text
                assert "drawn already" in busy.json()["detail"]
        finally:
            renders.release()
        assert api.get("/api/v1/studies/drawn/plots/history", headers=auth(token)).status_code == 409  # nothing to plot yet
        assert api.get("/api/v1/studies/drawn/report", headers=auth(token)).status_code == 200


def partial_body(server: LiveServer, token: str, path: str) -> bytes:
    """Ten bytes of a declared hundred, then silence: what the server answers within 15 s."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100\r\n\r\n{{\"a\": 1234".encode()
        )
        return read_answer(s)


def read_answer(s: socket.socket) -> bytes:
    """One HTTP answer, head and body (by its Content-Length), or what came before a timeout."""
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@pytest.mark.parametrize("role, path", [("member", "/api/v1/studies"), ("worker", "/api/v1/trials/1/report"), ("worker", "/api/v1/trials/claim")])
def test_a_body_that_stops_arriving_is_answered_408(server: LiveServer, make_token: Any, team: str, role: str, path: str) -> None:
    answer = partial_body(server, make_token(team, role), path)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"


def test_no_redirect_is_built_from_the_host_header(server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    evil = {"Host": "evil.example", **auth(token)}
    r = httpx.get(f"{server.url}/api/v1/studies/bonly/", headers=evil, follow_redirects=False)
    assert "evil.example" not in r.headers.get("location", ""), r.headers
    assert r.status_code == 404, r.text
    r = httpx.get(f"{server.url}/dashboard", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/dashboard/", r.headers


def test_the_api_documentation_can_be_turned_off(server: LiveServer) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 404, path


def test_a_burst_of_reports_gets_503s_not_the_whole_process(db_url: str, make_token: Any, team: str) -> None:
    """The review's burst (a viewer asking for 16 reports at once) against a real server with one
    turn and no wait: the reports beyond the one being drawn are 503 with Retry-After, at once."""
    from concurrent.futures import ThreadPoolExecutor

    s = LiveServer(db_url, HPO_RENDER_CONCURRENCY="1", HPO_RENDER_WAIT_SECONDS="0")
    try:
        with s.client(make_token(team, "member")) as m, s.client(make_token(team, "worker")) as w:
            m.post("/api/v1/studies", json={**digits_definition("burst"), "budget": {"n_trials": 6, "max_concurrent": 6}}).raise_for_status()
            for i in range(6):
                a = w.post("/api/v1/trials/claim", json={"worker_id": "w"}).json()
                w.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 1, "value": 2.0 + i}).raise_for_status()
                w.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "complete", "value": 1.0 + i}).raise_for_status()
        viewer = make_token(team, "viewer")

        def report(_: int) -> int:
            with s.client(viewer) as v:
                return v.get("/api/v1/studies/burst/report").status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(report, range(16)))
        assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    finally:
        s.stop()
