"""Commands for the server host: migrate, serve, down (tokens: service/cli/tokens.py)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from service.settings import Settings, get_settings


def resolve_database_url(settings: Settings, *, stop_on_exit: bool = True) -> str:
    """The configured database, or the embedded one in the data directory."""
    if settings.database_url:
        return settings.database_url
    from service.embedded import start_embedded

    return start_embedded(settings.data_dir, stop_on_exit=stop_on_exit)


def migrate() -> None:
    """Create or upgrade Optuna's schema and ours. Safe to run twice, or from two processes at once.

    Example: HPO_DATABASE_URL=postgresql://postgres@127.0.0.1/hpo hpo migrate
    """
    from service.migrate import migrate as run_migrations

    settings = get_settings()
    run_migrations(resolve_database_url(settings), settings)
    typer.echo("database is up to date")


def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (env HPO_HOST)")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (env HPO_PORT)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="uvicorn processes (env HPO_API_WORKERS)")] = None,
) -> None:
    """Run the REST API (run `hpo migrate` first).

    Example: HPO_DATABASE_URL=postgresql://... hpo serve --host 0.0.0.0 --port 8000
    """
    import uvicorn

    from service.migrate import maintenance_warnings, pending_migrations

    settings = get_settings()
    url = resolve_database_url(settings)
    missing = pending_migrations(url, settings)
    if missing:
        typer.echo(f"error: the database needs `hpo migrate` first: {missing}", err=True)
        raise typer.Exit(2)
    for warning in maintenance_warnings(url, settings):
        typer.echo(f"warning: {warning}", err=True)
    # The uvicorn processes build their own Settings from the environment; hand them the URL
    # of the embedded database when that is what we use.
    os.environ["HPO_DATABASE_URL"] = url
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.api_workers,
        log_level=settings.log_level,
        # uvicorn logs each request at info; below that level, don't even format the line.
        access_log=settings.log_level in ("trace", "debug", "info"),
    )


def down() -> None:
    """Stop the embedded PostgreSQL that `hpo up` left running for optuna-dashboard.

    Example: hpo down
    """
    from service.embedded import stop_embedded

    stopped = stop_embedded(get_settings().data_dir)
    typer.echo("embedded database stopped" if stopped else "no embedded database is running")
