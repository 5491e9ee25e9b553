"""`hpo token`: create on the server host (the database), and create/list/revoke through the API
with an admin token."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import BIN, LiveServer, auth, prefix_of, run_with_database


def hpo(*args: str, db_url: str) -> subprocess.CompletedProcess[str]:
    return run_with_database(str(BIN / "hpo"), *args, url=db_url)


def hpo_remote(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`hpo` on a machine without the database: no HPO_DATABASE_URL, nothing from the tests' env,
    and no config file (`hpo token list|revoke` would read the one `hpo up` writes)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    return subprocess.run(
        [str(BIN / "hpo"), *args],
        cwd=Path(__file__).resolve().parent.parent,
        env={**clean, "XDG_CONFIG_HOME": str(Path(__file__).resolve().parent / "no-such-config-home"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_token_create_gives_a_working_admin_token(api: Any, db_url: str, team: str) -> None:
    result = hpo("token", "create", "--team", team, db_url=db_url)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("hpo_") and "\n" not in token
    assert prefix_of(token) in result.stderr and "admin" in result.stderr and "shown only once" in result.stderr
    created = api.post("/api/v1/studies", json={"name": "via-cli"}, headers=auth(token))
    assert created.status_code == 201, created.text
    assert created.json()["optuna_name"] == f"{team}/via-cli"
    listing = api.get("/api/v1/tokens", headers=auth(token)).json()
    assert [(t["prefix"], t["role"]) for t in listing["tokens"]] == [(prefix_of(token), "admin")]
    # A second token for the same team sees the same studies.
    other = hpo("token", "create", "--team", team, "--role", "viewer", "--name", "dash", "--expires-in-days", "3", db_url=db_url)
    assert other.returncode == 0, other.stderr
    viewer = other.stdout.strip()
    assert viewer != token and "expires" in other.stderr
    names = [s["name"] for s in api.get("/api/v1/studies", headers=auth(viewer)).json()["studies"]]
    assert names == ["via-cli"]
    listed = {t["prefix"]: t for t in api.get("/api/v1/tokens", headers=auth(token)).json()["tokens"]}
    assert listed[prefix_of(viewer)]["role"] == "viewer" and listed[prefix_of(viewer)]["name"] == "dash"
    assert listed[prefix_of(viewer)]["expires_at"] is not None


def test_token_create_refuses_bad_input(db_url: str) -> None:
    result = hpo("token", "create", "--team", "Bad Team", db_url=db_url)
    assert result.returncode == 2
    assert "team names are" in result.stderr
    assert hpo("token", "create", "--team", "ok", "--role", "owner", db_url=db_url).returncode == 2
    missing = hpo("token", "create", db_url=db_url)
    assert missing.returncode == 2 and "--team" in missing.stderr


def test_create_list_and_revoke_through_the_api(live_server: LiveServer, make_token: Any, team: str) -> None:
    admin = make_token(team)
    flags = ("--server", live_server.url, "--token", admin)
    made = hpo_remote("token", "create", *flags, "--role", "worker", "--name", "gpu-box-3")
    assert made.returncode == 0, made.stderr
    worker = made.stdout.strip()
    assert f"worker token {prefix_of(worker)} for team '{team}'" in made.stderr
    with live_server.client(worker) as client:
        assert client.post("/api/v1/trials/claim", json={"worker_id": "w"}).status_code == 204

    # The same through the environment, as on a workstation: HPO_SERVER_URL and HPO_TOKEN.
    env = {"HPO_SERVER_URL": live_server.url, "HPO_TOKEN": admin}
    listed = hpo_remote("token", "list", **env)
    assert listed.returncode == 0, listed.stderr
    assert prefix_of(admin) in listed.stdout and prefix_of(worker) in listed.stdout and "gpu-box-3" in listed.stdout
    assert worker not in listed.stdout

    revoked = hpo_remote("token", "revoke", prefix_of(worker), **env)
    assert revoked.returncode == 0, revoked.stderr
    with live_server.client(worker) as client:
        response = client.post("/api/v1/trials/claim", json={"worker_id": "w"})
        assert response.status_code == 401 and "revoked" in response.json()["detail"]
    as_json = hpo_remote("token", "list", "--json", **env)
    tokens = {t["prefix"]: t for t in json.loads(as_json.stdout)["tokens"]}
    assert tokens[prefix_of(worker)]["revoked_at"] is not None

    # The last admin stays; the refusal comes back as the API's message.
    last = hpo_remote("token", "revoke", prefix_of(admin), **env)
    assert last.returncode == 1 and "409" in last.stderr and "last active admin" in last.stderr
    # A matching --team is fine; another team is refused before anything is created.
    assert hpo_remote("token", "create", "--team", team, "--role", "viewer", **env).returncode == 0
    wrong = hpo_remote("token", "create", "--team", team + "x", "--role", "viewer", **env)
    assert wrong.returncode == 2 and f"belongs to team '{team}'" in wrong.stderr
    # Through the API the role must be said.
    assert hpo_remote("token", "create", **env).returncode == 2


def test_api_commands_need_an_admin_token(live_server: LiveServer, make_token: Any, team: str) -> None:
    member = make_token(team, "member")
    result = hpo_remote("token", "list", "--server", live_server.url, "--token", member)
    assert result.returncode == 1
    assert "403" in result.stderr and "needs role admin; this token is member" in result.stderr
    no_token = hpo_remote("token", "list", "--server", live_server.url)
    assert no_token.returncode == 2 and "--token" in no_token.stderr
    no_server = hpo_remote("token", "list")
    assert no_server.returncode == 2 and "--server" in no_server.stderr
    bad_prefix = hpo_remote("token", "revoke", "hpo_xyz", "--server", live_server.url, "--token", member)
    assert bad_prefix.returncode == 2
    unreachable = hpo_remote("token", "list", "--server", "http://127.0.0.1:9", "--token", member)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
