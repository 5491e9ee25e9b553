"""Commands for the server host: migrate, serve, down (tokens: service/cli/tokens.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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
    processes = workers or settings.api_workers
    with _metrics_shared_by(processes):
        uvicorn.run(
            "service.api.app:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=processes,
            log_level=settings.log_level,
            # uvicorn logs each request at info; below that level, don't even format the line.
            access_log=settings.log_level in ("trace", "debug", "info"),
        )


@contextmanager
def _metrics_shared_by(processes: int) -> Iterator[None]:
    """With several uvicorn processes, a scrape of GET /metrics reaches one of them: the
    processes keep their counters in files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's
    multiprocess mode), which every scrape adds up. Ours is a new directory, removed at exit;
    one set in the environment is used as it is, emptied of an earlier run's files first."""
    if processes <= 1:
        yield
        return
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="hpo-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)


def down() -> None:
    """Stop the embedded PostgreSQL that `hpo up` left running for optuna-dashboard.

    Example: hpo down
    """
    from service.embedded import stop_embedded

    stopped = stop_embedded(get_settings().data_dir)
    typer.echo("embedded database stopped" if stopped else "no embedded database is running")
