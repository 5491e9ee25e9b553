"""Shared helpers of the benchmark scripts (bench/coordination.py, bench/throughput.py).

Each script works in a throwaway database that it creates on the PostgreSQL given by
`--database-url` (default: HPO_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres;
that URL is only used to CREATE and DROP the throwaway database) and serves it with a real
`hpo serve` (uvicorn) process, started and stopped the way bench/chaos.py does it."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.chaos import ApiServer, server_env, tail  # noqa: E402
from service.settings import Settings, normalize_database_url  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HPO_DATABASE_URL") or DEFAULT_ADMIN_URL,
        help="a PostgreSQL server to create the throwaway database on (default: HPO_DATABASE_URL, else %(default)s)",
    )


def libpq_url(url: str) -> str:
    """The URL without SQLAlchemy's driver suffix, for psycopg and libpq tools."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _database_url(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return normalize_database_url(libpq_url(make_url(admin_url).set(database=name).render_as_string(hide_password=False)))


@contextlib.contextmanager
def throwaway_database(admin_url: str, prefix: str = "hpo_bench") -> Iterator[str]:
    """A new empty database, migrated (Optuna's tables and ours); dropped afterwards.

    Yields its SQLAlchemy URL (postgresql+psycopg://...)."""
    import psycopg

    from service.migrate import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(admin_url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _database_url(admin_url, name)
    try:
        migrate(url, Settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(libpq_url(admin_url), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_tokens(url: str, team: str, *roles: str) -> dict[str, str]:
    """One token per role of `team` (created if new), written straight to the database as
    `hpo token create` on the server host does."""
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import create_token, ensure_team

    settings = Settings(database_url=url)
    engine = make_engine(url, settings, application_name="hpo-bench")
    try:
        with make_sessionmaker(engine).begin() as session:
            t = ensure_team(session, team)
            return {role: create_token(session, t, role) for role in roles}
    finally:
        engine.dispose()


@contextlib.contextmanager
def api_server(url: str, *, processes: int = 1, **env: str) -> Iterator[ApiServer]:
    """A real `hpo serve` on a free port (uvicorn, `processes` worker processes), logging at
    warning level (no access log) to a temp dir; stopped afterwards. Its log is printed on a
    failed start."""
    logs = Path(tempfile.mkdtemp(prefix="hpo-bench-logs-"))
    base = server_env(url, lease_seconds=600, heartbeat_seconds=60, reaper_seconds=10)
    base.update(HPO_LOG_LEVEL="warning", HPO_API_WORKERS=str(processes), **env)
    server = ApiServer(base, logs, name="api")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.log_files:
            text = tail(server.log_files[-1], 200)
            if "Traceback" in text:
                print(f"--- tail of the API log ({server.log_files[-1]}):\n{text}", file=sys.stderr)
        shutil.rmtree(logs, ignore_errors=True)


def optuna_storage(url: str) -> Any:
    """A plain RDBStorage, as a user of raw Optuna would make it (optuna.create_study wraps it
    in Optuna's per-process cache, as the service's storage is)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RDBStorage(url)


def create_study(client: Any, definition: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/studies", json=definition)
    if response.status_code != 201:
        raise RuntimeError(f"POST /api/v1/studies answered {response.status_code}: {response.text}")
    return response.json()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the two nearest ranks; nan when empty.

    With n samples, a p99 is close to the largest one unless n is well above 100."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def ratio(a: float, b: float) -> str:
    """a/b as "1.23x"; two significant digits below 0.1 ("0.0044x"), so a small ratio is not 0.00x."""
    if not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    r = a / b
    return f"{r:.2g}x" if abs(r) < 0.1 else f"{r:.2f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (it pastes into docs/benchmarks.md as it is)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


def machine_line(url: str) -> str:
    """What the figures were measured on: cores, CPU model, PostgreSQL, load average."""
    import psycopg

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=10) as conn:
            pg = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except Exception:  # noqa: BLE001 - informational only
        pg = "?"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return f"machine: {os.cpu_count()} cores, {cpu}; PostgreSQL {pg}; Python {platform.python_version()}; load average {load}"


def log(script: str, message: str) -> None:
    print(f"{script}: {message}", file=sys.stderr, flush=True)
