"""What every study command shares to reach the service: the --server and --token options, the
study-name argument, and connect(), which resolves the server and token (in the order that
studies.py's docstring gives) and turns the service's errors into a red message and an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from hpo_client import Client
from hpo_client.config import load_settings
from hpo_client.errors import AuthError, ConfigError, HpoError, NotFoundError, ServerUnreachable
from service.cli.output import _fail

ServerOption = Annotated[
    Optional[str],
    typer.Option("--server", help="Service URL (else HPO_SERVER or HPO_SERVER_URL, then the config file `hpo up` writes)"),
]
TokenOption = Annotated[
    Optional[str], typer.Option("--token", help="API token of the team (else HPO_TOKEN, then the config file)")
]
NameArgument = Annotated[str, typer.Argument(help="The study's name (see `hpo studies`)", show_default=False)]


@contextmanager
def connect(server: str | None, token: str | None) -> Iterator[Client]:
    """A client for the resolved server and token; service errors become a red message and exit 1."""
    try:
        settings = load_settings(server, token)
    except ConfigError as exc:
        _fail(str(exc), code=2)
    if not settings.token:
        _fail(
            f"no token: pass --token, set HPO_TOKEN, or run `hpo up`, which writes one to {settings.config_path}",
            code=2,
        )
    client = Client(settings.server or "", settings.token, timeout=settings.timeout)
    try:
        yield client
    except ServerUnreachable as exc:
        _fail(f"{exc.detail}; is the service running? (--server, HPO_SERVER or {settings.config_path})")
    except AuthError as exc:
        _fail(f"{exc.detail} (HTTP {exc.status}; the token comes from --token, HPO_TOKEN or {settings.config_path})")
    except NotFoundError as exc:
        if exc.detail == "Not Found":  # FastAPI's own 404: the route, not a study, is missing
            _fail(f"the service at {settings.server} has no route {exc.method} {exc.path} (an older version?)")
        _fail(exc.detail)
    except HpoError as exc:
        _fail(exc.detail if exc.status is None else f"{exc.detail} (HTTP {exc.status})")
    finally:
        client.close()
