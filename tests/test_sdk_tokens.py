"""hpo_client.Client's token API (create_token, tokens, revoke_token, audit) against a real
`hpo serve`, and where `hpo token` (which goes through the SDK) takes its server and token from."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hpo_client import (
    AuditEvent,
    AuthError,
    Client,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    Token,
    TokenCreated,
    TokenList,
)
from hpo_client.config import write_config
from tests.conftest import BIN, LiveServer, prefix_of


def test_create_list_revoke_and_audit(live_server: LiveServer, make_token: Any, team: str) -> None:
    admin = make_token(team)
    with Client(live_server.url, admin) as hpo:
        made = hpo.create_token("worker", name="gpu-box-3", expires_in_days=7)
        assert isinstance(made, TokenCreated)
        assert made.token.startswith("hpo_") and made.prefix == prefix_of(made.token)
        assert (made.role, made.name, made.team, made.active) == ("worker", "gpu-box-3", team, True)
        assert made.expires_at is not None and made.revoked_at is None
        assert made.token not in repr(made)  # shown once, not in logs
        week = datetime.now(timezone.utc) + timedelta(days=7)
        assert abs((made.expires_at - week).total_seconds()) < 300

        at = datetime.now(timezone.utc) + timedelta(days=2)
        dated = hpo.create_token("viewer", expires_at=at)
        assert dated.expires_at is not None and abs((dated.expires_at - at).total_seconds()) < 1
        forever = hpo.create_token("member")
        assert forever.expires_at is None and forever.name is None

        listing = hpo.tokens()
        assert isinstance(listing, TokenList) and listing.team == team
        assert all(isinstance(t, Token) for t in listing.tokens)
        assert {t.prefix for t in listing.tokens} == {prefix_of(admin), made.prefix, dated.prefix, forever.prefix}
        listed = listing.get(made.prefix)
        assert listed is not None and listed.role == "worker" and listed.name == "gpu-box-3"
        assert not hasattr(listed, "token") and listing.get("hpo_00000000") is None

        assert hpo.revoke_token(made.prefix) is None
        hpo.revoke_token(made.prefix)  # again: nothing changes
        revoked = hpo.tokens().get(made.prefix)
        assert revoked is not None and revoked.revoked_at is not None and not revoked.active
        assert made.prefix not in {t.prefix for t in hpo.tokens().active}

        events = hpo.audit()
        assert all(isinstance(e, AuditEvent) for e in events)
        mine = [(e.action, e.target, e.actor) for e in events if e.target == made.prefix]
        # Newest first; each revoke that changed something is recorded once.
        assert mine == [("token.revoke", made.prefix, prefix_of(admin)), ("token.create", made.prefix, prefix_of(admin))]
        assert len(hpo.audit(limit=1)) == 1

    with Client(live_server.url, made.token) as revoked_client, pytest.raises(AuthError) as refused:
        revoked_client.studies()
    assert refused.value.status == 401 and "revoked" in refused.value.detail


def test_only_admins_manage_tokens(live_server: LiveServer, make_token: Any, team: str) -> None:
    for role in ("member", "viewer", "worker"):
        with Client(live_server.url, make_token(team, role)) as hpo:
            with pytest.raises(PermissionDeniedError) as refused:
                hpo.tokens()
            assert isinstance(refused.value, AuthError) and refused.value.status == 403
            assert refused.value.detail == f"GET /api/v1/tokens needs role admin; this token is {role}"
            with pytest.raises(PermissionDeniedError, match=f"POST /api/v1/tokens needs role admin; this token is {role}"):
                hpo.create_token("admin")
            with pytest.raises(PermissionDeniedError):
                hpo.revoke_token(prefix_of(make_token(team)))
            with pytest.raises(PermissionDeniedError):
                hpo.audit()
    with Client(live_server.url, "hpo_00000000_not-a-token") as stranger, pytest.raises(AuthError) as unknown:
        stranger.tokens()
    assert unknown.value.status == 401 and not isinstance(unknown.value, PermissionDeniedError)


def test_refusals_carry_the_services_message(live_server: LiveServer, make_token: Any, team: str) -> None:
    admin = make_token(team)
    with Client(live_server.url, admin) as hpo:
        with pytest.raises(NotFoundError) as missing:
            hpo.revoke_token("hpo_00000000")
        assert missing.value.status == 404 and missing.value.detail == "no token with prefix 'hpo_00000000'"
        # Another team's token is as unknown as a missing one.
        other = make_token(team + "x")
        with pytest.raises(NotFoundError):
            hpo.revoke_token(prefix_of(other))

        with pytest.raises(ConflictError) as last:
            hpo.revoke_token(prefix_of(admin))
        assert last.value.status == 409 and "last active admin" in last.value.detail

        with pytest.raises(InvalidRequestError) as bad_role:
            hpo.create_token("owner")
        assert bad_role.value.status == 422 and bad_role.value.detail.startswith("role")
        with pytest.raises(InvalidRequestError, match="expires_in_days"):
            hpo.create_token("viewer", expires_in_days=0)
        with pytest.raises(InvalidRequestError, match="give one of them, not both"):
            hpo.create_token("viewer", expires_in_days=1, expires_at=datetime.now(timezone.utc) + timedelta(days=2))
        with pytest.raises(InvalidRequestError, match="expires_at"):
            hpo.create_token("viewer", expires_at="2001-01-01T00:00:00Z")
        with pytest.raises(InvalidRequestError, match="name"):
            hpo.create_token("viewer", name="")
        with pytest.raises(InvalidRequestError):
            hpo.audit(limit=0)
        # Nothing was created by the refused calls.
        assert [t.prefix for t in hpo.tokens().tokens] == [prefix_of(admin)]


# -- `hpo token` through the SDK: where the server and token come from -------------------------


def hpo(*args: str, config_home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`hpo` with nothing HPO_* from the tests' environment and its config file under config_home."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    return subprocess.run(
        [str(BIN / "hpo"), *args],
        cwd=Path(__file__).resolve().parent.parent,
        env={**clean, "XDG_CONFIG_HOME": str(config_home), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_and_revoke_read_the_config_file(live_server: LiveServer, make_token: Any, team: str, tmp_path: Path) -> None:
    admin = make_token(team)
    write_config(live_server.url, admin, tmp_path / "hpo" / "client.yaml")
    listed = hpo("token", "list", "--json", config_home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    assert listing["team"] == team and [t["prefix"] for t in listing["tokens"]] == [prefix_of(admin)]
    assert set(listing["tokens"][0]) >= {"prefix", "role", "name", "created_at", "expires_at", "last_used_at", "revoked_at", "active"}

    worker = make_token(team, "worker")
    revoked = hpo("token", "revoke", prefix_of(worker), config_home=tmp_path)
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked {prefix_of(worker)}"

    # Flags and the environment still come first; a refused token says where it came from.
    member = make_token(team, "member")
    refused = hpo("token", "list", config_home=tmp_path, HPO_TOKEN=member)
    assert refused.returncode == 1 and "403" in refused.stderr and "came from HPO_TOKEN" in refused.stderr
    config_token = hpo("token", "list", "--server", "http://127.0.0.1:9", config_home=tmp_path)
    assert config_token.returncode == 1 and "cannot reach http://127.0.0.1:9" in config_token.stderr

    (tmp_path / "hpo" / "client.yaml").write_text("[not, a, mapping]\n")
    broken = hpo("token", "list", config_home=tmp_path)
    assert broken.returncode == 2 and "must be a mapping" in broken.stderr


def test_create_without_a_server_stays_on_the_database(
    live_server: LiveServer, make_token: Any, db_url: str, team: str, tmp_path: Path
) -> None:
    """The config file `hpo up` writes on the server host must not turn `hpo token create --team T`
    (a team's first admin, straight into the database) into an API call as another team's admin."""
    write_config(live_server.url, make_token(team), tmp_path / "hpo" / "client.yaml")
    new_team = team + "new"
    made = hpo("token", "create", "--team", new_team, config_home=tmp_path, HPO_DATABASE_URL=db_url)
    assert made.returncode == 0, made.stderr
    assert f"admin token {prefix_of(made.stdout.strip())} for team '{new_team}'" in made.stderr
    with Client(live_server.url, made.stdout.strip()) as new_admin:
        events = new_admin.audit()
    assert [(e.action, e.actor, e.detail.get("via")) for e in events] == [("token.create", None, "server")]

    # A server named by the environment goes through the API, with the config file's token.
    via_api = hpo("token", "create", "--role", "viewer", config_home=tmp_path, HPO_SERVER=live_server.url)
    assert via_api.returncode == 0, via_api.stderr
    assert f"viewer token {prefix_of(via_api.stdout.strip())} for team '{team}'" in via_api.stderr
