"""Hostile input: bodies over their limit are 413 whether or not Content-Length says so (and
whether or not it tells the truth), nothing is stored, and every error has the one shape
{"error", "detail"}."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import LiveServer, auth, digits_definition

BODY_LIMIT = 4096
CHECKPOINT_LIMIT = 16384
IMPORT_LIMIT = 8192


@pytest.fixture(scope="module")
def small_api(db_url: str, tmp_path_factory: Any) -> Iterator[TestClient]:
    settings = Settings(
        database_url=db_url,
        max_body_bytes=BODY_LIMIT,
        max_checkpoint_bytes=CHECKPOINT_LIMIT,
        max_import_bytes=IMPORT_LIMIT,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def stored(db_url: str, team: str) -> tuple[int, ...]:
    """The team's rows a refused request must not add to: studies (ours and Optuna's), audit
    events, checkpoints and intermediate values."""
    queries = (
        "SELECT count(*) FROM hpo_studies s JOIN hpo_teams t ON t.id = s.team_id WHERE t.name = %(team)s",
        "SELECT count(*) FROM studies WHERE study_name LIKE %(like)s",
        "SELECT count(*) FROM hpo_audit a JOIN hpo_teams t ON t.id = a.team_id WHERE t.name = %(team)s",
        "SELECT count(*) FROM hpo_checkpoints c JOIN hpo_studies s ON s.id = c.study_id"
        " JOIN hpo_teams t ON t.id = s.team_id WHERE t.name = %(team)s",
        "SELECT count(*) FROM trial_intermediate_values v JOIN trials USING (trial_id) JOIN studies USING (study_id)"
        " WHERE study_name LIKE %(like)s",
    )
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        return tuple(conn.execute(q, {"team": team, "like": team + "/%"}).fetchone()[0] for q in queries)


def padded_definition(name: str, size: int) -> bytes:
    """A definition whose JSON is `size` bytes or more (the padding is an unknown field, but
    the limit is checked before anything is parsed)."""
    definition = digits_definition(name)
    definition["description"] = "x" * size
    return json.dumps(definition).encode()


def in_chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    """A streamed body: httpx sends it chunked, without Content-Length."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.mark.parametrize("how", ["content-length", "chunked", "lying content-length"])
def test_an_oversized_definition_is_413_and_stores_nothing(small_api: TestClient, make_token: Any, team: str, db_url: str, how: str) -> None:
    token = make_token(team, "member")
    big = padded_definition("too-big", BODY_LIMIT)
    headers = {**auth(token), "Content-Type": "application/json"}
    before = stored(db_url, team)
    if how == "content-length":
        response = small_api.post("/api/v1/studies", content=big, headers=headers)
        assert response.request.headers["content-length"] == str(len(big))
    elif how == "chunked":
        response = small_api.post("/api/v1/studies", content=in_chunks(big), headers=headers)
        assert "content-length" not in response.request.headers
    else:
        response = small_api.post("/api/v1/studies", content=big, headers={**headers, "Content-Length": "100"})
    body = assert_error(response, 413, "payload_too_large")
    assert str(BODY_LIMIT) in body["detail"] and "HPO_MAX_BODY_BYTES" in body["detail"]
    assert stored(db_url, team) == before
    # YAML has the same limit.
    yaml_body = yaml.safe_dump({**digits_definition("too-big"), "description": "x" * BODY_LIMIT}).encode()
    response = small_api.post("/api/v1/studies", content=in_chunks(yaml_body), headers={**headers, "Content-Type": "application/yaml"})
    assert_error(response, 413, "payload_too_large")
    assert stored(db_url, team) == before
    # A body under the limit goes through.
    assert small_api.post("/api/v1/studies", json=digits_definition("small-enough"), headers=auth(token)).status_code == 201


def test_checkpoints_have_their_own_larger_limit(small_api: TestClient, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    assert small_api.post("/api/v1/studies", json=digits_definition("ckpt"), headers=auth(token)).status_code == 201
    a = small_api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(token)).json()
    url = f"/api/v1/trials/{a['trial_id']}/checkpoint"
    headers = {**auth(token), "Content-Type": "application/octet-stream"}

    def send(step: int, content: Any, **extra: str) -> httpx.Response:
        return small_api.post(url, params={"lease_id": a["lease_id"], "step": step, "value": 0.5}, content=content, headers={**headers, **extra})

    # Over the JSON limit but under the checkpoint limit: fine.
    assert send(1, b"s" * (BODY_LIMIT * 2)).status_code == 200
    before = stored(db_url, team)
    too_big = b"s" * (CHECKPOINT_LIMIT + 1)
    for response in (send(2, too_big), send(2, in_chunks(too_big, 4096)), send(2, too_big, **{"Content-Length": "10"})):
        body = assert_error(response, 413, "payload_too_large")
        assert "HPO_MAX_CHECKPOINT_BYTES" in body["detail"]
    # Neither the step's value nor its checkpoint was kept.
    assert stored(db_url, team) == before
    trial = small_api.get("/api/v1/studies/ckpt/trials", headers=auth(token)).json()["trials"][0]
    assert trial["intermediate_values"] == {"1": 0.5}
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        assert conn.execute("SELECT step, size FROM hpo_checkpoints WHERE trial_id = %s", (a["trial_id"],)).fetchall() == [
            (1, BODY_LIMIT * 2)
        ]
    # Other routes under /trials keep the small limit.
    response = small_api.post(
        f"/api/v1/trials/{a['trial_id']}/report", content=b'{"lease_id": "' + b"x" * BODY_LIMIT + b'"}', headers=auth(token)
    )
    assert_error(response, 413, "payload_too_large")
    assert small_api.delete("/api/v1/studies/ckpt", headers=auth(token)).status_code == 204


def test_a_real_server_refuses_oversized_bodies(live_server: LiveServer, make_token: Any, team: str, db_url: str) -> None:
    """uvicorn, the default limit (1 MiB), a chunked upload and a declared one."""
    token = make_token(team)
    big = padded_definition("huge", 1024 * 1024)
    before = stored(db_url, team)
    with live_server.client(token) as client:
        headers = {"Content-Type": "application/json"}
        assert_error(client.post("/api/v1/studies", content=in_chunks(big, 65536), headers=headers), 413, "payload_too_large")
        assert_error(client.post("/api/v1/studies", content=big, headers=headers), 413, "payload_too_large")
        # The server is fine afterwards.
        assert client.get("/api/v1/studies").status_code == 200
    assert stored(db_url, team) == before


def test_every_error_has_one_shape(api: TestClient, make_token: Any, team: str) -> None:
    admin, viewer = make_token(team), make_token(team, "viewer")
    assert_error(api.get("/api/v1/no-such-route", headers=auth(admin)), 404, "not_found")
    assert_error(api.get("/no-such-route"), 404, "not_found")
    assert_error(api.delete("/api/v1/presets", headers=auth(admin)), 405, "method_not_allowed")
    assert_error(api.put("/api/v1/studies", headers=auth(admin)), 405, "method_not_allowed")
    assert_error(api.post("/api/v1/studies", content="x", headers={**auth(admin), "Content-Type": "text/plain"}), 415, "unsupported_media_type")
    assert_error(api.post("/api/v1/studies", content="{", headers={**auth(admin), "Content-Type": "application/json"}), 422, "invalid_request")
    assert_error(api.post("/api/v1/trials/not-a-number/heartbeat", json={"lease_id": "x"}, headers=auth(admin)), 422, "invalid_request")
    assert_error(api.post("/api/v1/trials/claim", content="[", headers={**auth(admin), "Content-Type": "application/json"}), 422, "invalid_request")
    assert_error(api.get("/api/v1/studies"), 401, "unauthorized")
    assert_error(api.get("/api/v1/studies", headers={"Authorization": "Bearer hpo_00000000_nope"}), 401, "unauthorized")
    assert_error(api.delete("/api/v1/studies/x", headers=auth(viewer)), 403, "forbidden")
    assert_error(api.get("/api/v1/studies/x", headers=auth(admin)), 404, "not_found")
    assert_error(api.get("/api/v1/audit", params={"limit": "many"}, headers=auth(admin)), 422, "invalid_request")
    big = {"Content-Length": str(10 * 1024 * 1024), "Content-Type": "application/json"}
    assert_error(api.post("/api/v1/studies", content=b"{}", headers={**auth(admin), **big}), 413, "payload_too_large")


def test_an_import_has_its_own_limit(small_api: TestClient, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    assert small_api.post("/api/v1/studies", json=digits_definition("imp"), headers=auth(token)).status_code == 201
    headers = {**auth(token), "Content-Type": "application/octet-stream"}
    before = stored(db_url, team)
    # Over the JSON limit, under the import limit: judged (not an SQLite file), not refused for size.
    for url in ("/api/v1/studies/imp/import", "/api/v1/studies/import?name=imp2"):
        assert_error(small_api.post(url, content=b"s" * (BODY_LIMIT * 2), headers=headers), 422, "invalid_request")
    for url in ("/api/v1/studies/imp/import", "/api/v1/studies/import?name=imp2"):
        body = assert_error(small_api.post(url, content=b"s" * (IMPORT_LIMIT + 1), headers=headers), 413, "payload_too_large")
        assert "HPO_MAX_IMPORT_BYTES" in body["detail"]
    assert stored(db_url, team) == before
