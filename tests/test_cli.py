"""`hpo token create` on the server host gives a token the API accepts for that team."""

from __future__ import annotations

import subprocess
from typing import Any

from tests.conftest import BIN, run_with_database


def hpo(*args: str, db_url: str) -> subprocess.CompletedProcess[str]:
    return run_with_database(str(BIN / "hpo"), *args, url=db_url)


def test_token_create_gives_a_working_team_token(api: Any, db_url: str, team: str) -> None:
    result = hpo("token", "create", "--team", team, db_url=db_url)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("hpo_")
    headers = {"Authorization": f"Bearer {token}"}
    created = api.post("/api/v1/studies", json={"name": "via-cli"}, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["optuna_name"] == f"{team}/via-cli"
    # A second token for the same team sees the same studies.
    other = hpo("token", "create", "--team", team, db_url=db_url).stdout.strip()
    assert other != token
    names = [s["name"] for s in api.get("/api/v1/studies", headers={"Authorization": f"Bearer {other}"}).json()["studies"]]
    assert names == ["via-cli"]


def test_token_create_refuses_a_bad_team_name(db_url: str) -> None:
    result = hpo("token", "create", "--team", "Bad Team", db_url=db_url)
    assert result.returncode == 2
    assert "team names are" in result.stderr
