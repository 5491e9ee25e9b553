"""Imports flow one way (DESIGN.md): api -> engine/db -> spec. The worker may import only
service.spec of the service, and nothing imports service.api but service.api itself."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(package: str) -> dict[str, set[str]]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts): imports_of(p) for p in (ROOT / package).rglob("*.py")
    }


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_worker_imports_only_service_spec() -> None:
    bad = {
        (mod, imp)
        for mod, imps in modules("worker").items()
        for imp in imps
        if _within(imp, "service") and not _within(imp, "service.spec") and imp != "service"
    }
    assert not bad, bad


def test_nothing_outside_api_imports_api() -> None:
    bad = {
        (mod, imp)
        for package in ("service", "worker", "migrations")
        for mod, imps in modules(package).items()
        if not _within(mod, "service.api")
        for imp in imps
        if _within(imp, "service.api")
    }
    assert not bad, bad


def test_engine_db_and_spec_do_not_reach_upwards() -> None:
    rules = {
        "service.engine": ("service.api", "service.cli"),
        "service.db": ("service.api", "service.engine", "service.cli"),
        "service.spec": ("service.api", "service.engine", "service.db", "service.cli", "fastapi", "sqlalchemy", "torch", "optuna"),
    }
    bad = set()
    for mod, imps in modules("service").items():
        for layer, forbidden in rules.items():
            if _within(mod, layer):
                bad |= {(mod, imp) for imp in imps if any(_within(imp, f) for f in forbidden)}
    assert not bad, bad


def test_only_the_engine_and_migrate_import_optuna() -> None:
    """DESIGN.md: service/engine is the one place that talks to Optuna (migrate upgrades its schema)."""
    bad = {
        (mod, imp)
        for mod, imps in modules("service").items()
        if not _within(mod, "service.engine") and mod != "service.migrate"
        for imp in imps
        if _within(imp, "optuna")
    }
    assert not bad, bad


# Where the engine uses Optuna's private modules today. Nothing new may join; the list shrinks
# as they move behind one adapter (issue: the engine's worker-protocol path in one place).
PRIVATE_OPTUNA_USERS = {
    "service.engine.storage",
    "service.engine.optuna_rows",
    "service.engine.coordination",
    "service.engine.factories",
    "service.engine.team_storage",
    "service.engine.pareto_plot",
}


def _private(name: str) -> bool:
    return _within(name, "optuna") and any(part.startswith("_") for part in name.split(".")[1:])


def test_private_optuna_modules_stay_where_they_are() -> None:
    users = {mod for package in ("service", "worker", "hpo_client") for mod, imps in modules(package).items() if any(_private(i) for i in imps)}
    assert users <= PRIVATE_OPTUNA_USERS, users - PRIVATE_OPTUNA_USERS


# What the API may take of SQLAlchemy: sessions and engines handed to it, and the errors to
# render. Engines, statements and raw SQL are db's and the engine's.
API_SQLALCHEMY = {"sqlalchemy", "sqlalchemy.Engine", "sqlalchemy.exc", "sqlalchemy.orm", "sqlalchemy.orm.Session", "sqlalchemy.orm.sessionmaker"}


def test_the_api_builds_no_engine_and_writes_no_sql() -> None:
    bad = {
        (mod, imp)
        for mod, imps in modules("service").items()
        if _within(mod, "service.api")
        for imp in imps
        if _within(imp, "sqlalchemy") and imp not in API_SQLALCHEMY
    }
    assert not bad, bad


def test_the_checker_sees_imports() -> None:
    # Guard against a walker that silently finds nothing.
    assert "service.spec" in modules("worker")["worker.runner"]
    assert any(_within(i, "service.engine") for i in modules("service")["service.api.trials"])
    assert any(_private(i) for i in modules("service")["service.engine.optuna_rows"])
    assert "sqlalchemy.orm.Session" in modules("service")["service.api.trials"]
