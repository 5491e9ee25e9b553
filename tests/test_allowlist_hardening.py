"""Security review 2026-12, finding 12 (the plugin allowlist followed symlinked packages and
attribute paths; command patterns matched names that are no file) and finding 16 (a team
name with a trailing newline passed `re.match(... $)`).

Each attack is the review's, rebuilt in tmp_path: a package `allowedpkg/` whose `sub` is a
symlink to `../evil`, where evil's import-time code and run() leave marker files. The worker
may refuse it wherever it likes, but none of evil's code may run."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.spec import Assignment
from tests.conftest import BIN, LiveServer, run_with_database, start_worker
from worker.workloads import allow
from worker.workloads.allow import command_allowed, plugin_allowed
from worker.workloads.external import run_user_workload
from worker.workloads.policy import Policy, child_argv

ALLOW = ["allowedpkg.*"]
SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


# ---------------------------------------------------------------- the review's tree


def marker_code(path: Path) -> str:
    return f"open({str(path)!r}, 'w').write('ran')\n"


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/allowedpkg (a package; `sub` -> ../evil) and tmp_path/evil, whose code drops
    markers in tmp_path/markers: at import (EVIL-4044, and its __init__) and in run() (EVILPLUG-4044)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    pkg = tmp_path / "allowedpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugmod.py").write_text(
        textwrap.dedent(
            """
            import os
            from os import system

            def run(trial):
                return 0.25
            """
        )
    )
    (pkg / "inner").mkdir()  # a real subpackage: nested modules still work
    (pkg / "inner" / "__init__.py").write_text("")
    (pkg / "inner" / "mod.py").write_text("def run(trial):\n    return 0.5\n")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "__init__.py").write_text(marker_code(markers / "EVIL-INIT-4044"))
    (evil / "evil.py").write_text(
        marker_code(markers / "EVIL-4044") + f"def run(trial):\n    {marker_code(markers / 'EVILPLUG-4044')}    return 1.0\n"
    )
    (pkg / "sub").symlink_to("../evil")
    (pkg / "linked.py").symlink_to("../evil/evil.py")  # a symlinked module file, same story
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] in ("allowedpkg", "evil")]:
        del sys.modules[name]


def markers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "markers").iterdir())


@pytest.fixture
def on_path(tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tree importable here and in the worker's children (PYTHONPATH), as a worker host has it."""
    monkeypatch.syspath_prepend(str(tree))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    return tree


def plugin(entry: str) -> Assignment:
    return Assignment.model_validate(
        {
            "trial_id": 7,
            "lease_id": "lease",
            "study": "s",
            "number": 0,
            "params": {"x": 0.5},
            "workload": {"model": "plugin", "entry": entry},
            "lease_seconds": 30,
            "heartbeat_seconds": 1,
            "direction": "minimize",
        }
    )


ATTACKS = [
    "allowedpkg.sub.evil:run",  # through the symlinked directory
    "allowedpkg.linked:run",  # a symlinked module file
    "allowedpkg.plugmod:os.system",  # an attribute path to a callable elsewhere
    "allowedpkg.plugmod:run.__globals__.get",
]


# ---------------------------------------------------------------- plugin entries (no server)


@pytest.mark.parametrize(
    "entry",
    [
        "allowedpkg.plugmod:os.system",
        "allowedpkg.plugmod:run.__globals__.get",
        "allowedpkg.plugmod:__init__",
        "allowedpkg.plugmod:__class__",
        "allowedpkg.plugmod:",
        "allowedpkg..plugmod:run",
        "allowedpkg.plugmod:run:x",
        "allowedpkg.plugmod:run ",
        "allowedpkg.plugmod:run\n",
        "allowedpkg.__init__:run",
        "allowedpkg.plugmod:ｒun",  # fullwidth: getattr does not normalize as the compiler does
    ],
)
def test_only_a_plain_function_name_follows_the_colon(entry: str) -> None:
    assert fnmatch_would_pass(entry)  # what let these through before
    assert not plugin_allowed(entry, ALLOW)


def fnmatch_would_pass(entry: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(entry, p) for p in ALLOW)


def test_plain_entries_and_entry_point_names_still_match() -> None:
    assert plugin_allowed("allowedpkg.plugmod:run", ALLOW)
    assert plugin_allowed("allowedpkg.inner.mod:_private_ok", ALLOW)
    assert plugin_allowed("my-entry-point", ["my-*"])
    assert not plugin_allowed("otherpkg:run", ALLOW)


def test_the_module_file_must_lie_in_the_top_level_packages_real_directory(tree: Path) -> None:
    path = [str(tree)]
    assert allow.plugin_origin("allowedpkg.plugmod", path) == str(tree / "allowedpkg" / "plugmod.py")
    assert allow.plugin_origin("allowedpkg.inner.mod", path) == str(tree / "allowedpkg" / "inner" / "mod.py")
    with pytest.raises(allow.NotAllowed, match="outside"):
        allow.plugin_origin("allowedpkg.sub.evil", path)
    with pytest.raises(allow.NotAllowed, match="outside"):
        allow.plugin_origin("allowedpkg.sub", path)
    with pytest.raises(allow.NotAllowed, match="outside"):
        allow.plugin_origin("allowedpkg.linked", path)
    assert markers(tree) == []  # found, checked and refused without running any of it
    assert not any(m.startswith(("allowedpkg", "evil")) for m in sys.modules)


def test_a_symlinked_top_level_package_counts_where_it_points(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # The operator's own link (site-packages/pkg -> /opt/src/pkg): the real directory is the package.
    elsewhere = tmp_path_factory.mktemp("path")
    (elsewhere / "allowedpkg").symlink_to(tree / "allowedpkg")
    assert allow.plugin_origin("allowedpkg.plugmod", [str(elsewhere)]) == str(tree / "allowedpkg" / "plugmod.py")
    with pytest.raises(allow.NotAllowed):
        allow.plugin_origin("allowedpkg.sub.evil", [str(elsewhere)])


def test_a_namespace_package_is_held_to_its_own_directories(tmp_path: Path) -> None:
    # `examples` in this repository has no __init__.py; the same escape must fail there too.
    (tmp_path / "ns").mkdir()
    (tmp_path / "ns" / "ok.py").write_text("def run(trial):\n    return 1.0\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "bad.py").write_text(marker_code(tmp_path / "BAD"))
    (tmp_path / "ns" / "sub").symlink_to("../out")
    assert allow.plugin_origin("ns.ok", [str(tmp_path)]) == str(tmp_path / "ns" / "ok.py")
    with pytest.raises(allow.NotAllowed, match="outside"):
        allow.plugin_origin("ns.sub.bad", [str(tmp_path)])
    assert not (tmp_path / "BAD").exists()


@pytest.mark.parametrize("entry", ATTACKS)
def test_the_worker_refuses_the_attacks_before_starting_a_process(on_path: Path, entry: str) -> None:
    argv, why = child_argv(plugin(entry), Policy(allow_plugins=ALLOW))
    assert argv is None and why is not None
    assert entry in why
    assert markers(on_path) == []


def test_the_worker_still_starts_allowed_plugins(on_path: Path) -> None:
    for entry in ("allowedpkg.plugmod:run", "allowedpkg.inner.mod:run"):
        argv, why = child_argv(plugin(entry), Policy(allow_plugins=ALLOW))
        assert why is None and argv is not None and argv[-1] == entry


@pytest.mark.parametrize("entry", ATTACKS + ["allowedpkg.plugmod:system"])
def test_the_plugin_host_refuses_them_on_its_own(on_path: Path, entry: str) -> None:
    # The child checks again with its own sys.path before importing: no worker-side check to rely on.
    from worker.plugin_host import load

    with pytest.raises((allow.NotAllowed, ValueError)):
        load(entry)
    assert markers(on_path) == []


def test_the_plugin_host_loads_plain_entries(on_path: Path) -> None:
    from worker.plugin_host import load

    assert load("allowedpkg.plugmod:run")(None) == 0.25
    assert load("allowedpkg.inner.mod:run")(None) == 0.5


def test_an_entry_point_is_held_to_the_same_rule(on_path: Path) -> None:
    from worker.plugin_host import load

    # An installed distribution whose entry points lead into and out of the package.
    dist = on_path / "teamplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: teamplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[hpo.workloads]\nfine = allowedpkg.plugmod:run\nsneaky = allowedpkg.sub.evil:run\n"
    )
    assert load("fine")(None) == 0.25
    with pytest.raises(allow.NotAllowed, match="outside"):
        load("sneaky")
    argv, why = child_argv(plugin("sneaky"), Policy(allow_plugins=["sneaky", "fine"]))
    assert argv is None and why is not None and "outside" in why
    assert child_argv(plugin("fine"), Policy(allow_plugins=["sneaky", "fine"]))[0] is not None
    assert markers(on_path) == []


def run_plugin(entry: str) -> Any:
    class NoReports:
        def report(self, a: Assignment, step: int, value: float) -> bool:
            raise AssertionError("nothing should be reported")

    return run_user_workload(
        plugin(entry),
        client=NoReports(),  # type: ignore[arg-type]
        lease_lost=threading.Event(),
        stop=threading.Event(),
        device="cpu",
        data_root=None,
        policy=Policy(allow_plugins=ALLOW),
    )


@pytest.mark.parametrize("entry", ATTACKS + ["allowedpkg.plugmod:system"])
def test_a_refused_trial_fails_not_allowed(on_path: Path, entry: str) -> None:
    # `system` is os.system imported into plugmod: the worker lets the name through and the
    # plugin host refuses it after the import, still as not_allowed.
    outcome = run_plugin(entry)
    assert (outcome.state, outcome.reason) == ("failed", "not_allowed"), outcome
    assert "allowedpkg" in (outcome.error or "")
    assert markers(on_path) == []


def test_an_allowed_plugin_still_completes(on_path: Path) -> None:
    outcome = run_plugin("allowedpkg.plugmod:run")
    assert (outcome.state, outcome.value) == ("complete", 0.25), outcome


# ---------------------------------------------------------------- a real worker


def test_a_real_worker_refuses_the_attacks(
    live_server: LiveServer, make_token: Any, team: str, on_path: Path
) -> None:
    token = make_token(team)
    studies = {f"attack-{i}": entry for i, entry in enumerate(ATTACKS)} | {"fine": "allowedpkg.plugmod:run"}
    with live_server.client(token) as c:
        for name, entry in studies.items():
            study = {
                "name": name,
                "direction": "minimize",
                "workload": {"model": "plugin", "entry": entry},
                "space": SPACE,
                "budget": {"n_trials": 1, "max_concurrent": 1},
            }
            assert c.post("/api/v1/studies", json=study).status_code == 201, entry
        worker = start_worker(live_server.url, token, "--max-trials", str(len(studies)), "--allow-plugin", ALLOW[0])
        try:
            assert worker.wait(timeout=120) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        trials = {name: trial_of(c, name) for name in studies}
    for name in studies:
        if name == "fine":
            assert (trials[name]["state"], trials[name]["value"]) == ("COMPLETE", 0.25), trials[name]
        else:
            assert (trials[name]["state"], trials[name]["reason"]) == ("FAIL", "not_allowed"), trials[name]
            assert studies[name] in trials[name]["error"]
    assert markers(on_path) == []


def trial_of(c: httpx.Client, name: str) -> dict[str, Any]:
    trials = c.get(f"/api/v1/studies/{name}/trials").json()["trials"]
    assert len(trials) == 1, trials
    return trials[0]


# ---------------------------------------------------------------- commands


def test_a_command_pattern_matches_only_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "examples" / "sub").mkdir(parents=True)
    (tmp_path / "examples" / "ok.py").write_text("")
    cwd = str(tmp_path)
    # The review's `examples/*.py`, the pattern itself as the command: there is no such file.
    assert command_allowed("examples/*.py", ["examples/*.py"], cwd) is None
    assert command_allowed("examples/missing.py", ["examples/*.py"], cwd) is None
    assert command_allowed("examples/sub", ["examples/*"], cwd) is None  # a directory is no program
    assert command_allowed("examples/ok.py", ["examples/*.py"], cwd) == str(tmp_path / "examples" / "ok.py")


def test_a_missing_command_is_refused_saying_so(tmp_path: Path) -> None:
    a = Assignment.model_validate(
        {
            "trial_id": 7,
            "lease_id": "lease",
            "study": "s",
            "number": 0,
            "params": {},
            "workload": {"model": "command", "command": "examples/*.py"},
            "lease_seconds": 30,
            "heartbeat_seconds": 1,
            "direction": "minimize",
        }
    )
    argv, why = child_argv(a, Policy(allow_commands=["examples/*.py"]), cwd=str(tmp_path))
    assert argv is None and why is not None
    assert "no such file" in why and "examples/*.py" in why


# ---------------------------------------------------------------- team names (finding 16)


def test_ensure_team_refuses_a_name_with_a_trailing_newline(db_url: str, settings: Any, team: str) -> None:
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import ensure_team
    from service.errors import InvalidRequest

    engine = make_engine(db_url, settings, application_name="hpo-tests")
    try:
        session = make_sessionmaker(engine)()
        try:
            for bad in (f"{team}\n", f"{team}\n\n", f"\n{team}", "", "Upper", "a" * 64):
                with pytest.raises(InvalidRequest, match="team names are"):
                    ensure_team(session, bad)
            assert ensure_team(session, team).name == team
        finally:
            session.rollback()
            session.close()
    finally:
        engine.dispose()


def test_token_create_refuses_a_team_with_a_trailing_newline(db_url: str, settings: Any, team: str) -> None:
    result = run_with_database(str(BIN / "hpo"), "token", "create", "--team", f"{team}\n", url=db_url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "team names are" in result.stderr
    assert result.stdout.strip() == ""  # no token was printed
    assert not team_exists(db_url, settings, f"{team}\n")


def team_exists(db_url: str, settings: Any, name: str) -> bool:
    from sqlalchemy import select

    from service.db.models import Team
    from service.db.session import make_engine, make_sessionmaker

    engine = make_engine(db_url, settings, application_name="hpo-tests")
    try:
        with make_sessionmaker(engine)() as session:
            return session.scalars(select(Team).where(Team.name == name)).first() is not None
    finally:
        engine.dispose()


def test_the_python_rule_this_relies_on() -> None:
    import re

    from service.spec import NAME_PATTERN

    assert re.match(NAME_PATTERN, "delta\n")  # why re.match was not enough
    assert not re.fullmatch(NAME_PATTERN, "delta\n")



def test_what_the_review_saw_hold_still_holds(tmp_path: Path) -> None:
    """"What held": the command allowlist on real paths, and plugins outside the pattern."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "evil").mkdir()
    (tmp_path / "examples" / "ok.py").write_text("")
    (tmp_path / "evil" / "evil.py").write_text("")
    (tmp_path / "examples" / "link.py").symlink_to("../evil/evil.py")
    (tmp_path / "examples" / "sub").symlink_to("../evil")
    cwd, allowed = str(tmp_path), ["examples/*.py"]
    absolute = str(tmp_path / "evil" / "evil.py")
    for refused in ("examples/link.py", "examples/sub/evil.py", "examples/../evil/evil.py", absolute, sys.executable):
        assert command_allowed(refused, allowed, cwd) is None, refused
    for runs in ("./examples/ok.py", "examples/ok.py/"):
        assert command_allowed(runs, allowed, cwd) == str(tmp_path / "examples" / "ok.py"), runs
    for entry in ("evil.evil:run", "os:system", "examples"):
        assert not plugin_allowed(entry, ["examples.*"]), entry
