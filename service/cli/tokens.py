"""`hpo token create|list|revoke`.

Two ways in: on the server host, `hpo token create --team T` writes to the database directly
(how a team gets its first admin token); anywhere else, with `--server URL --token ADMIN_TOKEN`
(or HPO_SERVER_URL / HPO_TOKEN), every command goes through the API as that admin."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta
from enum import Enum
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

from service.settings import get_settings

token_app = typer.Typer(
    help="API tokens: `create --team T` on the server host (database), or create/list/revoke through the API "
    "with --server and an admin --token.",
    no_args_is_help=True,
)


class Role(str, Enum):
    admin = "admin"
    member = "member"
    worker = "worker"
    viewer = "viewer"


ServerOption = Annotated[
    Optional[str], typer.Option("--server", help="Service URL: work through the API (env HPO_SERVER_URL)")
]
TokenOption = Annotated[Optional[str], typer.Option("--token", help="An admin token of the team (env HPO_TOKEN)")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


class Remote:
    """The token API as an admin sees it."""

    def __init__(self, server: str, token: str) -> None:
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _fail(f"cannot reach {self.server}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                message = f"{body['error']}: {body['detail']}"
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise _fail(f"{method} {path} answered {response.status_code}: {message}")
        return response


def _remote(server: str | None, token: str | None) -> Remote | None:
    """A client when a server is given (flag or environment); None for the database."""
    settings = get_settings()
    server = server or settings.server_url
    token = token or settings.token
    if not server:
        return None
    if not token:
        raise typer.BadParameter("an admin token is needed to work through the API (--token or HPO_TOKEN)", param_hint="--token")
    return Remote(server, token)


def _when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")


@token_app.command("create")
def create(
    team: Annotated[Optional[str], typer.Option(help="Team name (created if new). Through the API: the admin token's team")] = None,
    role: Annotated[
        Optional[Role], typer.Option(help="What the token may do; default admin on the server host, required through the API")
    ] = None,
    name: Annotated[Optional[str], typer.Option(help="What the token is for, e.g. 'gpu-box-3 workers'")] = None,
    expires_in_days: Annotated[Optional[int], typer.Option(min=1, max=3650, help="Stop working after this many days")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Create a token and print it (it is shown only once; only its SHA-256 is stored).

    On the server host (a team's first admin): hpo token create --team vision

    Through the API: hpo token create --server http://api:8000 --token hpo_... --role worker --name gpu-box-3
    """
    if name is not None and not 1 <= len(name) <= 200:
        raise typer.BadParameter("names are 1-200 characters", param_hint="--name")
    remote = _remote(server, token)
    if remote is None:
        if not team:
            raise typer.BadParameter(
                "give --team to create a token in the database (on the server host), or --server and an admin --token",
                param_hint="--team",
            )
        created = _create_in_database(team, (role or Role.admin).value, name, expires_in_days)
    else:
        if role is None:
            raise typer.BadParameter("say which role the new token has (admin, member, worker or viewer)", param_hint="--role")
        with remote:
            if team is not None:
                own = remote.call("GET", "/api/v1/tokens").json()["team"]
                if own != team:
                    raise _fail(f"the admin token belongs to team '{own}', not '{team}'", code=2)
            body: dict[str, Any] = {"role": role.value, "name": name, "expires_in_days": expires_in_days}
            created = remote.call("POST", "/api/v1/tokens", json=body).json()
    expiry = f", expires {_when(created['expires_at'])}" if created["expires_at"] else ""
    typer.echo(
        f"created {created['role']} token {created['prefix']} for team '{created['team']}'{expiry}; it is shown only once:",
        err=True,
    )
    typer.echo(created["token"])


def _create_in_database(team: str, role: str, name: str | None, expires_in_days: int | None) -> dict[str, Any]:
    from service.cli.server import resolve_database_url
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import db_now, ensure_team, issue_token
    from service.spec import NAME_PATTERN, NAME_RULE

    if not re.match(NAME_PATTERN, team):
        raise typer.BadParameter(f"team names are {NAME_RULE}", param_hint="--team")
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), settings, application_name="hpo-cli")
    try:
        with make_sessionmaker(engine).begin() as session:
            row_team = ensure_team(session, team)
            expires_at = db_now(session) + timedelta(days=expires_in_days) if expires_in_days else None
            token, row = issue_token(session, row_team, role, name=name, expires_at=expires_at)
    finally:
        engine.dispose()
    return {
        "token": token,
        "prefix": row.prefix,
        "role": role,
        "team": team,
        "expires_at": expires_at.isoformat() if expires_at else None,
    }


def _require_remote(server: str | None, token: str | None) -> Remote:
    remote = _remote(server, token)
    if remote is None:
        raise typer.BadParameter("give the service URL (--server or HPO_SERVER_URL)", param_hint="--server")
    return remote


@token_app.command("list")
def list_(
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table")] = False,
) -> None:
    """The team's tokens: prefix, role, name, created, expires, last used, revoked (never the tokens).

    Example: hpo token list --server http://api:8000 --token hpo_...
    """
    with _require_remote(server, token) as remote:
        listing = remote.call("GET", "/api/v1/tokens").json()
    if as_json:
        typer.echo(json.dumps(listing, indent=2))
        return
    table = Table(title=f"tokens of team {listing['team']}")
    for column in ("prefix", "role", "name", "created", "expires", "last used", "revoked"):
        table.add_column(column, no_wrap=column in ("prefix", "created", "expires", "last used", "revoked"))
    for t in listing["tokens"]:
        style = None if t["active"] else "dim"
        table.add_row(
            t["prefix"],
            t["role"],
            t["name"] or "",
            _when(t["created_at"]),
            _when(t["expires_at"]),
            _when(t["last_used_at"]),
            _when(t["revoked_at"]),
            style=style,
        )
    # Piped or captured, rich would squeeze the table into 80 columns and cut the prefixes short.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@token_app.command("revoke")
def revoke(
    prefix: Annotated[str, typer.Argument(help="The token's prefix, hpo_<8 hex> (see `hpo token list`)")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Revoke a token of the team: it answers 401 from now on. The last active admin token cannot be revoked.

    Example: hpo token revoke hpo_1234abcd --server http://api:8000 --token hpo_...
    """
    if not re.fullmatch(r"hpo_[0-9a-f]{8}", prefix):
        raise typer.BadParameter("a prefix is hpo_ and 8 hex digits, e.g. hpo_1234abcd (see `hpo token list`)", param_hint="PREFIX")
    with _require_remote(server, token) as remote:
        remote.call("DELETE", f"/api/v1/tokens/{prefix}")
    typer.echo(f"revoked {prefix}")
