"""Fixtures on a real PostgreSQL: the local server at 127.0.0.1:5432 when it answers (as on the
development and CI machines), otherwise an embedded one (pgserver). Each test session works in
its own freshly created databases and drops them afterwards."""

from __future__ import annotations

import os

# What `hpo worker` sets (worker/cli.py): MKL's strict reproducibility, so the resume tests can
# compare losses exactly whatever the memory alignment. Before anything imports torch.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from hpo_client import Client
from service.settings import Settings, normalize_database_url

BIN = Path(sys.executable).parent
LOCAL_PG = os.environ.get("HPO_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin_url() -> tuple[str, object | None]:
    try:
        psycopg.connect(LOCAL_PG, connect_timeout=3).close()
        return LOCAL_PG, None
    except psycopg.OperationalError:
        import pgserver

        server = pgserver.get_server(tempfile.mkdtemp(prefix="hpo-test-pg-"), cleanup_mode="delete")
        return server.get_uri().replace("postgres:@", "postgres@", 1), server


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For a module that trains real models on CPU (`pytestmark = pytest.mark.usefixtures(...)`).
    These models are tiny: torch's intra-op threads cost more than they save, and on a busy 2-core
    machine their spinning made tests/test_trainer.py 6x slower (34 s against 5 s). Module-scoped,
    so a module-scoped run made for several tests gets one thread too: on CPU the same run repeats
    exactly only with the same number of threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    url, server = _admin_url()
    yield url
    if server is not None:
        server.cleanup()  # type: ignore[attr-defined]


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return normalize_database_url(base + ("?" + query if query else ""))


@pytest.fixture(scope="session")
def new_database(admin_url: str) -> Iterator[Callable[[], str]]:
    """Makes empty databases; all of them are dropped at the end of the session."""
    made: list[str] = []

    def make() -> str:
        name = f"hpo_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return _with_database(admin_url, name)

    yield make
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def db_url(new_database: Callable[[], str]) -> str:
    """One migrated database shared by the session; tests isolate themselves by team."""
    from service.migrate import migrate

    url = new_database()
    migrate(url, Settings(database_url=url))
    return url


@pytest.fixture(scope="session")
def settings(db_url: str) -> Settings:
    # The route-security and fuzz tests send thousands of bad tokens on purpose through this
    # in-process app; tests/test_redteam_limits.py checks the limit on refused tokens.
    return Settings(database_url=db_url, lease_seconds=30, heartbeat_seconds=1, auth_failures_per_minute=0)


@pytest.fixture(scope="session")
def make_token(db_url: str, settings: Settings) -> Iterator[Callable[..., str]]:
    """make_token(team) is an admin token of the team (created if new);
    make_token(team, "viewer", name=..., expires_at=...) one with another role."""
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import create_token, ensure_team

    engine = make_engine(db_url, settings, application_name="hpo-tests")
    sessions = make_sessionmaker(engine)

    def make(team: str, role: str = "admin", **kwargs: Any) -> str:
        with sessions.begin() as session:
            return create_token(session, ensure_team(session, team), role, **kwargs)

    yield make
    engine.dispose()


def prefix_of(token: str) -> str:
    """hpo_<8 hex>: the part of a token that names it."""
    return token[:12]


@pytest.fixture
def team() -> str:
    """A team name unique to the test, so tests sharing the database never see each other."""
    return f"t{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real `hpo serve` (uvicorn) process."""

    def __init__(self, db_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HPO_DATABASE_URL": db_url,
            "HPO_PORT": str(self.port),
            "HPO_HOST": "127.0.0.1",
            "HPO_LOG_LEVEL": "warning",
            **env,
        }
        self.process = subprocess.Popen([str(BIN / "hpo"), "serve"], env=self.env)
        process = self.process
        with Client(self.url, None, timeout=1) as client:
            if client.wait_until_healthy(60, running=lambda: process.poll() is None):
                return
        assert process.poll() is None, "hpo serve exited during start-up"
        raise RuntimeError("hpo serve did not become healthy")

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def peak_rss_kb(self) -> int:
        """The server process's peak resident memory so far (VmHWM), for memory bounds in tests."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/<pid>/status")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def live_server(db_url: str) -> Iterator[LiveServer]:
    server = LiveServer(db_url, HPO_HEARTBEAT_SECONDS="1", HPO_LEASE_SECONDS="30")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api(settings: Settings) -> Iterator[object]:
    """The app in-process (real PostgreSQL), for the many small API checks."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def start_worker(server_url: str, token: str, *args: str) -> subprocess.Popen[bytes]:
    """A real `hpo worker` process."""
    return subprocess.Popen(
        [str(BIN / "hpo"), "worker", "--server", server_url, "--token", token, "--threads", "1", *args],
        env={**os.environ},
    )


def finish_with_workers(c: httpx.Client, workers: list[subprocess.Popen[bytes]], names: list[str], timeout: float) -> None:
    """Wait until every study in `names` is finished, then for the workers (started with
    --exit-when-idle) to exit 0; a worker still running at the end is killed."""
    try:
        for name in names:
            wait_for(lambda n=name: c.get(f"/api/v1/studies/{n}").json()["state"] == "finished", timeout, f"{name} did not finish")
        for w in workers:
            assert w.wait(timeout=60) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def wait_for(predicate: Callable[[], object], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(message)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_with_database(*cmd: str, url: str) -> subprocess.CompletedProcess[str]:
    """A command (hpo, alembic) run from the repository root against the database at `url`."""
    return subprocess.run(
        cmd,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "HPO_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=180,
    )


def digits_definition(name: str, **overrides: object) -> dict[str, object]:
    definition: dict[str, object] = {
        "name": name,
        "direction": "minimize",
        "workload": {"model": "mlp", "dataset": "digits", "epochs": 3},
        "space": {
            "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
            "batch_size": {"type": "int", "low": 16, "high": 1024, "log": True},
            "dropout": {"type": "float", "low": 0.2, "high": 0.5},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        },
        "sampler": {"kind": "random", "seed": 1},
        "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "budget": {"n_trials": 4, "max_concurrent": 4},
    }
    definition.update(overrides)
    return definition
