"""Which of the team's code this worker runs (its allowlists), and the command line a plugin or
command trial's child process starts with (worker/workloads/external.py runs it)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from service.spec import Assignment
from worker.workloads.allow import (
    NotAllowed,
    check_plugin_place,
    command_allowed,
    plugin_allowed,
    plugin_search_path,
    real_path,
    split_entry,
)


@dataclass
class Policy:
    """The worker's rules for user workloads (WorkerSettings / CLI flags)."""

    allow_plugins: list[str] = field(default_factory=list)
    allow_commands: list[str] = field(default_factory=list)
    trial_timeout: float | None = None  # when the workload sets no timeout_seconds
    trial_memory_mb: int | None = None  # RLIMIT_AS for the child


def child_argv(a: Assignment, policy: Policy, cwd: str | None = None) -> tuple[list[str] | None, str | None]:
    """The child's command line, or None and why this worker refuses the trial's code."""
    w = a.workload
    if w.model == "plugin":
        assert w.entry is not None
        why = plugin_refusal(w.entry, policy, cwd)
        if why is not None:
            return None, why
        # The worker's own interpreter; `-m` puts the working directory on the child's sys.path.
        return [sys.executable, "-m", "worker.plugin_host", w.entry], None
    assert w.model == "command" and w.command is not None
    real = command_allowed(w.command, policy.allow_commands, cwd)
    if real is None:
        return None, command_refusal(w.command, policy, cwd)
    # The path that was checked runs, not the one written: a symlink swapped later changes nothing.
    if real.endswith(".py"):
        return [sys.executable, real, *w.args], None
    return [real, *w.args], None


def plugin_refusal(entry: str, policy: Policy, cwd: str | None = None) -> str | None:
    """Why this worker refuses the plugin entry, or None. The plugin host checks the module's
    place again with its own sys.path before importing it."""
    how = (
        f"allow it with --allow-plugin {entry!r} or HPO_ALLOW_PLUGINS='[\"{entry}\"]' (fnmatch patterns on "
        f"`package.module:function`, e.g. 'mypkg.*:train'; the module must lie inside its package's real "
        f"directory); allowed now: {policy.allow_plugins or 'none'}"
    )
    try:
        split_entry(entry)
    except NotAllowed as exc:
        return str(exc)
    if not plugin_allowed(entry, policy.allow_plugins):
        return f"plugin entry {entry!r} is not allowed on this worker; {how}"
    try:
        check_plugin_place(entry, plugin_search_path(cwd))
    except NotAllowed as exc:
        return f"plugin entry {entry!r} is not allowed on this worker: {exc}"
    return None


def command_refusal(command: str, policy: Policy, cwd: str | None = None) -> str:
    real = real_path(command, cwd)
    if not os.path.isfile(real):
        return f"command {command!r} (real path {real}) is not allowed on this worker: no such file"
    return (
        f"command {command!r} (real path {real}) is not allowed on this worker; "
        f"allow it with --allow-command PATTERN or HPO_ALLOW_COMMANDS='[\"PATTERN\"]' (glob on the real "
        f"path of an existing file, relative to the worker's directory, e.g. 'scripts/*.py'); "
        f"allowed now: {policy.allow_commands or 'none'}"
    )
