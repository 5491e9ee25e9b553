"""`hpo token create|list|revoke`.

Two ways in: on the server host, `hpo token create --team T` writes to the database directly
(how a team gets its first admin token); anywhere else every command goes through the API as an
admin token of the team, with no HTTP code here: hpo_client.Client makes the calls.

The server comes from --server, then HPO_SERVER or HPO_SERVER_URL, then (for list and revoke
only) the config file `hpo up` writes; the token from --token, then HPO_TOKEN, then that file.
`create` goes through the API only when --server or the environment names a server: the config
file never silently turns the server host's database path into an API call."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from hpo_client import Client
from hpo_client.config import ClientSettings, read_config
from hpo_client.errors import AuthError, ConfigError, HpoError, ServerUnreachable
from hpo_client.models import TokenCreated
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
    Optional[str],
    typer.Option(
        "--server",
        help="Service URL: work through the API (else HPO_SERVER or HPO_SERVER_URL; "
        "for list and revoke also the config file `hpo up` writes)",
    ),
]
TokenOption = Annotated[
    Optional[str], typer.Option("--token", help="An admin token of the team (else HPO_TOKEN, then the config file)")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@dataclass
class Remote:
    """Where the API calls go, and where the token came from (said when the service refuses it)."""

    server: str
    token: str
    token_source: str
    timeout: float

    @contextmanager
    def client(self) -> Iterator[Client]:
        """An SDK client; the service's refusals become `error: ...` and exit 1."""
        client = Client(self.server, self.token, timeout=self.timeout)
        try:
            yield client
        except ServerUnreachable as exc:
            raise _fail(exc.detail) from exc
        except HpoError as exc:
            message = f"{exc.method} {exc.path} answered {exc.status}: {exc.error}: {exc.detail}"
            if isinstance(exc, AuthError):
                message += f" (the token came from {self.token_source})"
            raise _fail(message) from exc
        finally:
            client.close()


def _remote(server: str | None, token: str | None, *, config_file: bool) -> Remote | None:
    """Where to call the API, or None when no server is named (the database, for `create`).
    With config_file=False only --server and the environment can name the server; the token may
    still come from the config file once a server is named."""
    try:
        env = ClientSettings()
        token_from = "--token" if token else "HPO_TOKEN" if env.token else None
        server = server or env.server
        token = token or env.token
        stored = read_config(env.config_path) if (config_file or server) and not (server and token) else {}
    except ConfigError as exc:
        raise _fail(str(exc), code=2) from exc
    if not server and config_file and stored.get("server"):
        server = stored["server"]
    if not server:
        return None
    if not token and stored.get("token"):
        token, token_from = stored["token"], str(env.config_path)
    if not token:
        raise typer.BadParameter(
            "an admin token is needed to work through the API (--token, HPO_TOKEN or the config file)", param_hint="--token"
        )
    return Remote(server.rstrip("/"), token, token_from or "--token", env.timeout)


def _when(value: datetime | str | None) -> str:
    if not value:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M UTC")


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
    # Only --server or the environment leads to the API: the config file `hpo up` writes must
    # not turn the server host's `hpo token create --team T` into an API call.
    remote = _remote(server, token, config_file=False)
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
        with remote.client() as client:
            if team is not None:
                own = client.tokens().team
                if own != team:
                    raise _fail(f"the admin token belongs to team '{own}', not '{team}'", code=2)
            created = client.create_token(role.value, name=name, expires_in_days=expires_in_days)
    expiry = f", expires {_when(created.expires_at)}" if created.expires_at else ""
    typer.echo(
        f"created {created.role} token {created.prefix} for team '{created.team}'{expiry}; it is shown only once:",
        err=True,
    )
    typer.echo(created.token)


def _create_in_database(team: str, role: str, name: str | None, expires_in_days: int | None) -> TokenCreated:
    from service.cli.server import resolve_database_url
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import db_now, ensure_team, issue_token
    from service.spec import NAME_PATTERN, NAME_RULE

    # fullmatch: re.match with `$` would take "delta\n" (the newline would be part of the name).
    if not re.fullmatch(NAME_PATTERN, team):
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
    return TokenCreated(token=token, prefix=row.prefix, role=role, name=name, team=team, expires_at=expires_at)


def _require_remote(server: str | None, token: str | None) -> Remote:
    remote = _remote(server, token, config_file=True)
    if remote is None:
        raise typer.BadParameter(
            "give the service URL (--server, HPO_SERVER or HPO_SERVER_URL, or the config file `hpo up` writes)",
            param_hint="--server",
        )
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
    with _require_remote(server, token).client() as client:
        listing = client.tokens()
    if as_json:
        typer.echo(json.dumps(listing.model_dump(mode="json"), indent=2))
        return
    table = Table(title=f"tokens of team {listing.team}")
    for column in ("prefix", "role", "name", "created", "expires", "last used", "revoked"):
        table.add_column(column, no_wrap=column in ("prefix", "created", "expires", "last used", "revoked"))
    for t in listing.tokens:
        table.add_row(
            t.prefix,
            t.role,
            t.name or "",
            _when(t.created_at),
            _when(t.expires_at),
            _when(t.last_used_at),
            _when(t.revoked_at),
            style=None if t.active else "dim",
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
    with _require_remote(server, token).client() as client:
        client.revoke_token(prefix)
    typer.echo(f"revoked {prefix}")
