"""`hpo migrate`: create or upgrade Optuna's schema and ours, under one advisory lock so that
two processes (two compose replicas, a deploy racing a CLI) can run it at the same time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from service.db.models import ALEMBIC_VERSION_TABLE
from service.db.session import make_engine
from service.settings import Settings

log = logging.getLogger(__name__)

# Any fixed 64-bit number; it only has to be the same in every process that migrates.
MIGRATE_LOCK_KEY = 0x68706F5F6D6967  # "hpo_mig"


def alembic_config() -> Config:
    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return cfg


def _migrate_optuna(url: str) -> None:
    # Constructing RDBStorage creates missing tables and stamps Optuna's own alembic version.
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, engine_kwargs={"pool_size": 1})
    try:
        if storage.get_current_version() != storage.get_head_version():
            log.info("upgrading Optuna's schema from %s", storage.get_current_version())
            storage.upgrade()
    finally:
        storage.remove_session()
        storage.engine.dispose()


def migrate(url: str, settings: Settings) -> None:
    engine = make_engine(url, settings, application_name="hpo-migrate")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATE_LOCK_KEY})
            conn.commit()
            try:
                _migrate_optuna(url)
                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
                _restore_curve_best_triggers(conn)
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATE_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


def pending_migrations(url: str, settings: Settings) -> str | None:
    """None when both schemas are current; otherwise what is missing, for a clear error."""
    head = ScriptDirectory.from_config(alembic_config()).get_heads()
    engine = make_engine(url, settings, application_name="hpo-schema-check")
    try:
        with engine.connect() as conn:
            ours = MigrationContext.configure(conn, opts={"version_table": ALEMBIC_VERSION_TABLE}).get_current_heads()
            theirs = MigrationContext.configure(conn).get_current_heads()
            off = curve_best_triggers_off(conn) if set(ours) == set(head) and theirs else []
    finally:
        engine.dispose()
    if set(ours) != set(head):
        return f"the hpo_* tables are at {list(ours) or 'nothing'}, not {head}"
    if not theirs:
        return "Optuna's tables do not exist"
    if off:
        return (
            f"the triggers that keep hpo_curve_bests on Optuna's trial_intermediate_values are missing or disabled "
            f"({', '.join(off)}): its rows would go stale, and reports be judged against wrong best values"
        )
    return None


def _curve_bests_migration() -> Any:
    return ScriptDirectory.from_config(alembic_config()).get_revision("0006").module


def curve_best_triggers_off(conn: Any) -> list[str]:
    """The triggers of migration 0006 that are missing, or disabled (they fire only when
    enabled, O, or always, A), on Optuna's trial_intermediate_values."""
    rows = conn.execute(
        text("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = to_regclass('trial_intermediate_values') AND NOT tgisinternal")
    ).all()
    on = {name for name, enabled in rows if enabled in ("O", "A")}
    return [name for name in _curve_bests_migration().TRIGGERS if name not in on]


def _restore_curve_best_triggers(conn: Any) -> None:
    """Make the triggers again where one was dropped or disabled (by hand, a restore that left
    them out), and forget every kept row: any may have gone stale while a trigger was away. A
    trial without a row is aggregated from Optuna's values by its readers until its next value
    makes the row again (migration 0006)."""
    off = curve_best_triggers_off(conn)
    if not off:
        return
    log.warning("restoring the hpo_curve_bests triggers (%s) and forgetting its rows", ", ".join(off))
    _curve_bests_migration().install_triggers(conn.exec_driver_sql)
    conn.execute(text("DELETE FROM hpo_curve_bests"))


def maintenance_warnings(url: str, settings: Settings) -> list[str]:
    """What in the database server's settings will slow the service down as studies grow."""
    engine = make_engine(url, settings, application_name="hpo-schema-check")
    try:
        with engine.connect() as conn:
            autovacuum = conn.execute(text("SELECT current_setting('autovacuum')")).scalar_one()
    finally:
        engine.dispose()
    if autovacuum != "on":
        # Seen in bench/coordination.py: with the statistics of empty tables, the planner walked a
        # 10,000-trial study on every report (docs/benchmarks.md, section a).
        return [
            "PostgreSQL runs with autovacuum off: nothing refreshes the planner's statistics as "
            "studies grow, and queries that should stay flat slow down with the number of trials. "
            "Turn it on, or run `vacuumdb --analyze-only` regularly."
        ]
    return []
