"""`hpo migrate` on an empty database: twice in a row and twice at once, then `alembic check`
finds nothing to do and Optuna still loads studies from the result."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import optuna
import psycopg
import pytest

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


def test_maintenance_warnings_say_when_autovacuum_is_off(new_database: Callable[[], str]) -> None:
    from service.migrate import maintenance_warnings
    from service.settings import Settings

    url = new_database()
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        autovacuum = conn.execute("SHOW autovacuum").fetchone()[0]
    warnings = maintenance_warnings(url, Settings(database_url=url))
    if autovacuum == "on":
        assert warnings == []
    else:
        assert len(warnings) == 1 and "autovacuum off" in warnings[0] and "vacuumdb --analyze-only" in warnings[0]


def test_curve_bests_are_filled_for_curves_stored_before_their_migration(new_database: Callable[[], str]) -> None:
    """Migration 0006 fills hpo_curve_bests from the values already stored, and from then on
    its triggers keep it; its downgrade removes table and triggers."""
    import math

    from alembic import command
    from sqlalchemy import create_engine

    from service.migrate import alembic_config

    url = new_database()
    assert run(str(BIN / "hpo"), "migrate", url=url).returncode == 0

    def alembic(verb: str, revision: str) -> None:
        engine = create_engine(url)
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            getattr(command, verb)(cfg, revision)
        engine.dispose()

    def kept() -> dict[int, tuple]:
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
            return {r[0]: r[1:] for r in conn.execute("SELECT trial_id, finite_min, finite_max, inf_pos, inf_neg FROM hpo_curve_bests")}

    alembic("downgrade", "0005")
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage)
    curves = {1: [0.5, 0.25, math.nan], 2: [math.inf, 3.0], 3: [math.nan], 4: [-math.inf, 1.0, 2.0]}
    ids = {}
    for key, values in curves.items():
        trial = study.ask()
        ids[key] = trial._trial_id
        for step, value in enumerate(values):
            trial.report(value, step)
    study.ask()  # a trial without values gets no row
    alembic("upgrade", "head")
    assert kept() == {
        ids[1]: (0.25, 0.5, False, False),
        ids[2]: (3.0, 3.0, True, False),
        ids[3]: (None, None, False, False),
        ids[4]: (1.0, 2.0, False, True),
    }
    storage.set_trial_intermediate_value(ids[3], 1, -7.0)  # kept from here on by the trigger
    assert kept()[ids[3]] == (-7.0, -7.0, False, False)

    alembic("downgrade", "0005")
    storage.set_trial_intermediate_value(ids[3], 2, 1.0)  # no trigger left to fail
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        assert conn.execute("SELECT to_regclass('hpo_curve_bests')").fetchone() == (None,)
    storage.engine.dispose()


@pytest.mark.parametrize("lost", ["disabled", "dropped"])
def test_a_lost_curve_bests_trigger_stops_serve_and_migrate_makes_it_again(new_database: Callable[[], str], lost: str) -> None:
    """Without its insert trigger hpo_curve_bests goes stale (a value Optuna writes is not in the
    trial's row, so a report would be judged against an old best): `hpo serve` refuses such a
    database by the trigger's name, and `hpo migrate` makes the trigger again and forgets the
    rows it can no longer trust, which the next report's summary aggregates from Optuna's values."""
    from service.engine.optuna_adapter import rows as optuna_rows
    from service.migrate import pending_migrations
    from service.settings import Settings

    url = new_database()
    assert run(str(BIN / "hpo"), "migrate", url=url).returncode == 0
    settings = Settings(database_url=url)
    assert pending_migrations(url, settings) is None
    plain = url.replace("postgresql+psycopg", "postgresql")

    def kept(trial_id: int) -> tuple | None:
        with psycopg.connect(plain) as conn:
            return conn.execute("SELECT finite_min, finite_max FROM hpo_curve_bests WHERE trial_id = %s", (trial_id,)).fetchone()

    storage = optuna.storages.RDBStorage(url)
    trial = optuna.create_study(storage=storage).ask()
    trial.report(0.5, 0)
    assert kept(trial._trial_id) == (0.5, 0.5)
    with psycopg.connect(plain) as conn:
        verb = "ALTER TABLE trial_intermediate_values DISABLE TRIGGER" if lost == "disabled" else "DROP TRIGGER"
        conn.execute(f"{verb} hpo_curve_bests_insert" + (" ON trial_intermediate_values" if lost == "dropped" else ""))
    trial.report(0.1, 1)
    assert kept(trial._trial_id) == (0.5, 0.5)  # stale: 0.1 is the best so far

    missing = pending_migrations(url, settings)
    assert missing is not None and "hpo_curve_bests_insert" in missing and "forget" not in missing
    refused = run(str(BIN / "hpo"), "serve", "--port", "1", url=url)
    assert refused.returncode == 2 and "hpo_curve_bests_insert" in refused.stderr and "hpo migrate" in refused.stderr

    assert run(str(BIN / "hpo"), "migrate", url=url).returncode == 0
    assert pending_migrations(url, settings) is None
    assert kept(trial._trial_id) is None  # forgotten, not trusted
    engine = storage.engine
    with engine.begin() as conn:
        summary = optuna_rows.insert_values_and_summarize(conn, [(trial._trial_id, 2, 0.3)])[trial._trial_id]
    assert (summary.best_min, summary.best_max) == (0.1, 0.5)  # aggregated from Optuna's values
    assert kept(trial._trial_id) == (0.1, 0.5)  # and made again, whole, by the trigger
    trial.report(0.05, 3)
    assert kept(trial._trial_id) == (0.05, 0.5)
    engine.dispose()


def test_trials_are_found_through_migration_0007s_indexes(new_database: Callable[[], str]) -> None:
    """Migration 0007: the reaper's read of the studies with unleased RUNNING trials and Optuna's
    read of a study's RUNNING trials (fail_stale_trials) use the partial index; a new trial's
    number and the view's refresh use (study_id, trial_id), with the statistics of an empty table
    as with fresh ones. None of them scans every trial. The downgrade removes both."""
    from alembic import command
    from sqlalchemy import create_engine

    from service.migrate import alembic_config

    url = new_database()
    assert run(str(BIN / "hpo"), "migrate", url=url).returncode == 0
    libpq_url = url.replace("postgresql+psycopg", "postgresql")
    storage = optuna.storages.RDBStorage(url)
    studies = [optuna.create_study(storage=storage, study_name=f"s{k}")._study_id for k in range(2)]
    storage.engine.dispose()
    with psycopg.connect(libpq_url) as conn:
        conn.execute("ANALYZE trials")  # the statistics of the empty table
        for study_id in studies:
            conn.execute(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                "SELECT g, %s, 'COMPLETE', now(), now() FROM generate_series(0, 4999) g",
                (study_id,),
            )
            conn.execute("INSERT INTO trials (number, study_id, state, datetime_start) VALUES (5000, %s, 'RUNNING', now())", (study_id,))
        conn.commit()
        newest = conn.execute("SELECT max(trial_id) FROM trials").fetchone()[0]

        def plan(sql: str, *params: object) -> str:
            return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params))

        reaper_read = "SELECT DISTINCT study_id FROM trials WHERE state = 'RUNNING'"
        stale_read = "SELECT trial_id FROM trials WHERE state = %s AND study_id = %s"
        number_read = "SELECT number FROM trials WHERE study_id = %s AND trial_id < %s ORDER BY trial_id DESC LIMIT 1"
        refresh_read = "SELECT trial_id, state FROM trials WHERE study_id = %s AND (trial_id > %s OR trial_id = ANY(%s))"
        for statistics in ("stale", "fresh"):
            if statistics == "fresh":
                conn.execute("ANALYZE trials")
            assert "hpo_ix_trials_running" in plan(reaper_read), statistics
            assert "hpo_ix_trials_running" in plan(stale_read, "RUNNING", studies[1]), statistics
            assert "hpo_ix_trials_study_trial" in plan(number_read, studies[0], newest), statistics
            refresh = plan(refresh_read, studies[1], newest - 3, [newest])
            assert "Seq Scan" not in refresh and "ix_trials_study_id" not in refresh, (statistics, refresh)
        assert [r[0] for r in conn.execute(number_read, (studies[0], newest))] == [5000]

    engine = create_engine(url)
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    engine.dispose()
    with psycopg.connect(libpq_url) as conn:
        assert conn.execute("SELECT to_regclass('hpo_ix_trials_running'), to_regclass('hpo_ix_trials_study_trial')").fetchone() == (None, None)
