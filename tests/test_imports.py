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


ADAPTER = "service.engine.optuna_adapter"

# A namedtuple's public API is spelled with a leading underscore.
NAMEDTUPLE_API = {"_fields", "_asdict", "_replace", "_make"}


def _private(name: str) -> bool:
    return _within(name, "optuna") and any(part.startswith("_") for part in name.split(".")[1:])


def test_only_the_adapter_imports_optunas_private_modules() -> None:
    users = {mod for package in ("service", "worker", "hpo_client") for mod, imps in modules(package).items() if any(_private(i) for i in imps)}
    assert users, "the walker found no private Optuna import at all"
    assert all(_within(mod, ADAPTER) for mod in users), {mod for mod in users if not _within(mod, ADAPTER)}


def private_names_used(path: Path) -> set[str]:
    """Private attributes read or written on objects that are not the code's own (`x._name`
    where x is not self or cls, getattr/setattr/hasattr with a "_name"), and strings naming a
    private Optuna module (a logger's name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) and node.attr not in NAMEDTUPLE_API:
                found.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr"):
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_"):
                found.add(str(node.args[1].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _private(node.value) and " " not in node.value:
            found.add(node.value)
    return found


def test_nothing_outside_the_adapter_touches_optunas_private_names() -> None:
    """In the modules that hold Optuna's objects (those that import optuna: the engine's, and
    migrate), outside the adapter."""
    holders = {mod for mod, imps in modules("service").items() if any(_within(i, "optuna") for i in imps) and not _within(mod, ADAPTER)}
    assert "service.engine.claims" in holders
    bad = {(mod, name) for mod in holders for name in private_names_used(ROOT / (mod.replace(".", "/") + ".py"))}
    assert not bad, bad


def test_the_adapters_private_names_still_exist_in_optuna() -> None:
    """A rename in Optuna shows here, by name, rather than as an AttributeError in a claim."""
    import optuna
    from optuna.storages import RDBStorage

    from service.engine.optuna_adapter import internals

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    assert isinstance(internals.trial_id(trial), int) and internals.trial_id(study.trials[0]) == internals.trial_id(trial)
    assert internals.study_id(study) == storage.get_study_id_from_name(study.study_name)
    assert internals.study_id(optuna.get_all_study_summaries(storage)[0]) == internals.study_id(study)
    assert internals.created_trial(trial) is not None
    cached = optuna.storages.get_storage(RDBStorage("sqlite:///:memory:"))
    assert isinstance(internals.backend_of(cached), RDBStorage)
    assert internals.auto_resource(optuna.pruners.HyperbandPruner()) is not None
    assert internals.auto_resource(optuna.pruners.SuccessiveHalvingPruner()) is not None
    assert internals.auto_resource(optuna.pruners.HyperbandPruner(max_resource=9)) is None
    import importlib

    importlib.import_module(internals.SCRATCH_STUDY_LOGGER)


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
    assert any(_private(i) for i in modules("service")["service.engine.optuna_adapter.rows"])
    assert "_trial_id" in private_names_used(ROOT / "service/engine/optuna_adapter/internals.py")
    assert "sqlalchemy.orm.Session" in modules("service")["service.api.trials"]
