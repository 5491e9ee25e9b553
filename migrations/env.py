"""Alembic environment for the hpo_* tables only.

Optuna migrates its own tables with its own alembic history (version table `alembic_version`);
ours uses `hpo_alembic_version` and never looks at tables without the `hpo_` prefix, otherwise
autogenerate would try to drop Optuna's tables and the two histories would collide.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.db.models import ALEMBIC_VERSION_TABLE, Base


def _ours(name: str | None, type_: str, *_: object) -> bool:
    return type_ != "table" or bool(name and name.startswith("hpo_"))


def _include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    if type_ == "table":
        return bool(name and name.startswith("hpo_"))
    table = getattr(obj, "table", None)
    return table is None or table.name.startswith("hpo_")


def _configure(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=ALEMBIC_VERSION_TABLE,
        include_name=_ours,
        include_object=_include_object,
        compare_type=True,
        compare_server_default=True,
    )


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Command-line use (`alembic check`): the URL comes from the service's Settings.
    from service.settings import Settings

    url = Settings().database_url
    if not url:
        raise SystemExit("set HPO_DATABASE_URL to run alembic directly")
    with create_engine(url).connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()


run()
