"""Which user workloads this worker agrees to run. Nothing is allowed unless listed.

Plugins: fnmatch patterns on the entry as the study writes it (`mypkg.*:train`, `my-entry-point`).

Commands: the script's real path (symlinks and `..` resolved, relative to the worker's working
directory) must match a pattern made absolute the same way. Matching is per path segment: `*`,
`?` and `[...]` stay within one directory, and a `**` segment matches any number of directories.
So `examples/*.py` admits `examples/train.py` but neither `examples/../../x.py` nor a symlink
in examples/ that points elsewhere (its real path is elsewhere)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatchcase


def plugin_allowed(entry: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(entry, pattern) for pattern in patterns)


def real_path(path: str, cwd: str | None = None) -> str:
    """The absolute path with symlinks and `..` resolved; glob characters in components that
    do not exist are kept as they are, so a pattern resolves the same way as a path."""
    return os.path.realpath(os.path.join(cwd or os.getcwd(), path))


def command_allowed(command: str, patterns: Iterable[str], cwd: str | None = None) -> str | None:
    """The command's real path when a pattern admits it, else None."""
    resolved = real_path(command, cwd)
    for pattern in patterns:
        if _segments_match(_split(resolved), _split(real_path(pattern, cwd))):
            return resolved
    return None


def _split(path: str) -> list[str]:
    return [part for part in path.split(os.sep) if part]


def _segments_match(parts: list[str], patterns: list[str]) -> bool:
    if not patterns:
        return not parts
    head, rest = patterns[0], patterns[1:]
    if head == "**":
        return any(_segments_match(parts[i:], rest) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _segments_match(parts[1:], rest)
