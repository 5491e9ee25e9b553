"""`hpo migrate` on an empty database: twice in a row and twice at once, then `alembic check`
finds nothing to do and Optuna still loads studies from the result."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import optuna
import psycopg

from tests.conftest import BIN
from tests.conftest import run_with_database as run


def test_migrate_twice_then_alembic_check_is_clean(new_database: Callable[[], str]) -> None:
    url = new_database()
    for _ in range(2):
        result = run(str(BIN / "hpo"), "migrate", url=url)
        assert result.returncode == 0, result.stderr
    check = run(str(BIN / "alembic"), "check", url=url)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        ours = conn.execute("SELECT version_num FROM hpo_alembic_version").fetchall()
        optunas = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"hpo_teams", "hpo_tokens", "hpo_studies", "hpo_leases", "studies", "trials"} <= tables
    assert len(ours) == 1 and len(optunas) == 1  # two separate histories, one head each

    optuna.create_study(study_name="t/after-migrate", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    loaded = optuna.load_study(study_name="t/after-migrate", storage=url)
    assert len(loaded.trials) == 2


def test_two_migrations_at_once(new_database: Callable[[], str]) -> None:
    url = new_database()
    env = {**os.environ, "HPO_DATABASE_URL": url}
    procs = [subprocess.Popen([str(BIN / "hpo"), "migrate"], env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    check = run(str(BIN / "alembic"), "check", url=url)
    assert check.returncode == 0, check.stdout + check.stderr


def test_serve_refuses_an_unmigrated_database(new_database: Callable[[], str]) -> None:
    url = new_database()
    result = run(str(BIN / "hpo"), "serve", "--port", "1", url=url)
    assert result.returncode == 2
    assert "hpo migrate" in result.stderr
