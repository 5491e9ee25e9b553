"""The embedded PostgreSQL (pgserver) used when no database URL is configured, so that the
quickstart runs the same SQL as production."""

from __future__ import annotations

import warnings
from pathlib import Path

from service.settings import normalize_database_url


def _import_pgserver():  # type: ignore[no-untyped-def]
    # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR (containers,
    # CI) that warns about a fallback that is fine for its lock file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def start_embedded(data_dir: Path, *, stop_on_exit: bool = True) -> str:
    """Start (or attach to) the server in `data_dir/postgres` and return its SQLAlchemy URL.

    stop_on_exit=False leaves it running after this process ends, so the printed
    `optuna-dashboard` command keeps working after the quickstart exits."""
    pgserver = _import_pgserver()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir / "postgres", cleanup_mode="stop" if stop_on_exit else None)
    uri = server.get_uri()
    # pgserver answers with an empty password ("postgres:@"); psycopg wants none at all.
    return normalize_database_url(uri.replace("postgres:@", "postgres@", 1))


def stop_embedded(data_dir: Path) -> bool:
    pgserver = _import_pgserver()
    pgdata = data_dir / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return False
    pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()
    return True
