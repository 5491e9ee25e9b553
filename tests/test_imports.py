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
        "service.spec": ("service.api", "service.engine", "service.db", "service.cli", "fastapi", "sqlalchemy", "torch"),
    }
    bad = set()
    for mod, imps in modules("service").items():
        for layer, forbidden in rules.items():
            if _within(mod, layer):
                bad |= {(mod, imp) for imp in imps if any(_within(imp, f) for f in forbidden)}
    assert not bad, bad


def test_the_checker_sees_imports() -> None:
    # Guard against a walker that silently finds nothing.
    assert "service.spec" in modules("worker")["worker.runner"]
    assert any(_within(i, "service.engine") for i in modules("service")["service.api.trials"])
