"""Which user workloads this worker agrees to run. Nothing is allowed unless listed.

Plugins: an entry is `package.module:function` (ASCII identifiers; the function one plain name,
no dots and no `__dunder__`) or an entry-point name in group `hpo.workloads`. Patterns are
fnmatch patterns on the entry as the study writes it (`mypkg.*:train`, `my-entry-point`). A
match is not enough: the module (for an entry point, the module it names) must be found on the
worker's path with its file, and every package on the way, inside the real directory of its
top-level package. So `mypkg.*` admits `mypkg/models.py` but not `mypkg/sub/x.py` where
`mypkg/sub` is a symlink out of mypkg/ (found and refused before any of its code runs), and the
function must be defined in that package (not `os.system` imported into one of its modules).

Commands: the script's real path (symlinks and `..` resolved, relative to the worker's working
directory) must be an existing file and match a pattern made absolute the same way. Matching is
per path segment: `*`, `?` and `[...]` stay within one directory, and a `**` segment matches any
number of directories. So `examples/*.py` admits `examples/train.py` but neither
`examples/../../x.py` nor a symlink in examples/ that points elsewhere (its real path is
elsewhere), nor the name `examples/*.py` itself."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import sys
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

GROUP = "hpo.workloads"
ENTRY_RULE = (
    "`package.module:function` (ASCII letters, digits and '_'; the function is one plain name, "
    "no dots and no __dunder__ names) or the name of an entry point in group hpo.workloads "
    "(letters, digits, '_', '.', '-')"
)
# ASCII only: getattr() does not NFKC-normalize names the way the compiler does.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENTRY_POINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


class NotAllowed(Exception):
    """This worker's policy refuses the code; the trial fails with reason `not_allowed`."""


# ---------------------------------------------------------------- plugin entries


def _plain_name(name: str) -> bool:
    return bool(_IDENTIFIER.fullmatch(name)) and not (name.startswith("__") and name.endswith("__"))


def _module_name(name: str) -> bool:
    return all(_plain_name(part) for part in name.split("."))


def split_entry(entry: str) -> tuple[str, str] | None:
    """(module, function) of a `module:function` entry; None for an entry-point name.
    NotAllowed for anything else (attribute paths, dunders, stray characters)."""
    if ":" not in entry:
        if _ENTRY_POINT_NAME.fullmatch(entry):
            return None
        raise NotAllowed(f"plugin entry {entry!r} is not a valid entry; expected {ENTRY_RULE}")
    module, _, function = entry.partition(":")
    if not _module_name(module) or not _plain_name(function):
        raise NotAllowed(f"plugin entry {entry!r} is not a valid entry; expected {ENTRY_RULE}")
    return module, function


def plugin_allowed(entry: str, patterns: Iterable[str]) -> bool:
    """Whether the entry is well formed and a pattern matches it as written (the first check;
    check_plugin_place adds where the code really lies)."""
    try:
        split_entry(entry)
    except NotAllowed:
        return False
    return any(fnmatchcase(entry, pattern) for pattern in patterns)


def find_entry_point(name: str, path: Sequence[str] | None = None) -> importlib.metadata.EntryPoint:
    """The entry point `name` of group hpo.workloads among the distributions on `path`
    (default sys.path), the first one as Python's own lookup takes it; LookupError if none."""
    found: list[importlib.metadata.EntryPoint] = []
    discovered = importlib.metadata.distributions(path=list(path)) if path is not None else importlib.metadata.distributions()
    for dist in discovered:
        found += [ep for ep in dist.entry_points if ep.group == GROUP]
    for ep in found:
        if ep.name == name:
            return ep
    names = sorted({ep.name for ep in found})
    raise LookupError(f"no entry point {name!r} in group {GROUP}; installed: {names or 'none'}")


def resolve_entry(entry: str, path: Sequence[str] | None = None) -> tuple[str, str]:
    """(module, attribute) the entry names: its own parts, or what its entry point points at.
    An entry point's attribute may be dotted: the installed package's metadata wrote it, not a study."""
    parts = split_entry(entry)
    if parts is not None:
        return parts
    ep = find_entry_point(entry, path)
    module, attribute = ep.module, ep.attr or ""
    if not _module_name(module) or not attribute or not all(_plain_name(p) for p in attribute.split(".")):
        raise NotAllowed(f"entry point {entry!r} = {ep.value!r} is not `package.module:function`")
    return module, attribute


def plugin_origin(name: str, path: Sequence[str] | None = None) -> str:
    """The real path of module `name`'s file, found the way `import` would find it on `path`
    (default: this process's sys.path and import hooks) without running any of its code or
    its packages' code. NotAllowed when it or a package on the way lies outside the real
    directory of the top-level package; ModuleNotFoundError when it is not there at all."""
    parts = name.split(".")
    spec = _find_top_level(parts[0], path)
    # The top-level package's real directories (one per namespace portion); a plain top-level
    # module is its own file. Every later step must stay inside them.
    roots = [os.path.realpath(p) for p in spec.submodule_search_locations or []]
    roots = roots or [os.path.realpath(_file_of(spec, name))]
    _require_inside(spec, roots, name)
    for depth in range(1, len(parts)):
        if spec.submodule_search_locations is None:
            raise ModuleNotFoundError(f"No module named {name!r}; {spec.name!r} is not a package", name=name)
        child = ".".join(parts[: depth + 1])
        found = _find_in(child, list(spec.submodule_search_locations))
        if found is None:
            raise ModuleNotFoundError(f"No module named {child!r}", name=child)
        spec = found
        _require_inside(spec, roots, name)
    return os.path.realpath(_file_of(spec, name))


def _find_top_level(top: str, path: Sequence[str] | None) -> ModuleSpec:
    try:
        # Finders only: a top-level find_spec imports nothing (the leaf's code runs at import).
        spec = importlib.util.find_spec(top) if path is None else _find_in(top, list(path))
    except ValueError as exc:  # already in sys.modules without a __spec__
        raise NotAllowed(f"cannot tell where module {top!r} comes from: {exc}") from None
    if spec is None:
        raise ModuleNotFoundError(f"No module named {top!r}", name=top)
    return spec


def _find_in(name: str, entries: list[str]) -> ModuleSpec | None:
    """What the path-based import finds for `name` in `entries` (a package's directories, or a
    path), as PathFinder does it, but without needing the parent package imported (PathFinder
    looks the parent up in sys.modules for a namespace portion)."""
    portions: list[str] = []
    for entry in entries:
        finder = pkgutil.get_importer(entry)  # the same path hooks and cache import uses
        spec = None if finder is None or not hasattr(finder, "find_spec") else finder.find_spec(name)
        if spec is None:
            continue
        if spec.loader is not None:
            return spec
        portions += list(spec.submodule_search_locations or [])  # a namespace portion: keep looking
    if not portions:
        return None
    namespace = ModuleSpec(name, None, is_package=True)
    namespace.submodule_search_locations = portions
    return namespace


def _file_of(spec: ModuleSpec, name: str) -> str:
    if not spec.has_location or not spec.origin:
        what = "a namespace package" if spec.submodule_search_locations is not None else f"{spec.origin or 'not a file'}"
        raise NotAllowed(f"plugin module {name!r}: {spec.name!r} is {what}, not a file in an allowed package")
    return spec.origin


def _places(spec: ModuleSpec) -> list[str]:
    """Where a module's code would come from: its file, and a package's directories."""
    places = [spec.origin] if spec.has_location and spec.origin else []
    return places + list(spec.submodule_search_locations or [])


def _inside(path: str, root: str) -> bool:
    return path == root or os.path.commonpath([path, root]) == root


def _require_inside(spec: ModuleSpec, roots: list[str], name: str) -> None:
    top = name.split(".")[0]
    for place in _places(spec):
        real = os.path.realpath(place)
        if not any(_inside(real, root) for root in roots):
            raise NotAllowed(
                f"plugin module {name!r}: {spec.name} resolves to {real}, outside the real directory of "
                f"package {top!r} ({', '.join(roots)}); plugins must lie inside their top-level package "
                f"(a symlink out of it is refused)"
            )


def require_loaded_from(module: ModuleType, origin: str) -> None:
    """After the import: the module is the file that was checked (an import hook or a changed
    __path__ could have found another)."""
    loaded = getattr(module, "__file__", None)
    real = os.path.realpath(loaded) if loaded else None
    if real != origin:
        raise NotAllowed(f"plugin module {module.__name__!r} was loaded from {real or 'no file'}, not from the checked {origin}")


def require_defined_in(target: Any, module: str, entry: str) -> None:
    """The callable comes from the plugin's own top-level package: a name the module merely
    imported (os.system, subprocess.run) is not the team's function."""
    top = module.split(".")[0]
    defined = getattr(target, "__module__", None)
    if not isinstance(defined, str) or not (defined == top or defined.startswith(top + ".")):
        raise NotAllowed(
            f"plugin entry {entry!r} names {type(target).__name__} from module {defined!r}, not a function "
            f"defined in package {top!r}"
        )


def plugin_search_path(cwd: str | None = None) -> list[str]:
    """Where the plugin host's import looks: its working directory (`python -m` puts it first;
    the child inherits the worker's), PYTHONPATH, then this interpreter's own path."""
    cwd = cwd or os.getcwd()
    pythonpath = [os.path.join(cwd, p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [cwd, *pythonpath, *(p for p in sys.path if p)]


def check_plugin_place(entry: str, path: Sequence[str]) -> None:
    """NotAllowed when the entry's module (or its entry point's) lies outside its package.
    A module or entry point that is not found passes: the plugin host, which checks again with
    its own sys.path before importing, then fails the trial the way Python says it."""
    try:
        module, _ = resolve_entry(entry, path)
        plugin_origin(module, path)
    except (ImportError, LookupError):
        pass


# ---------------------------------------------------------------- commands


def real_path(path: str, cwd: str | None = None) -> str:
    """The absolute path with symlinks and `..` resolved; glob characters in components that
    do not exist are kept as they are, so a pattern resolves the same way as a path."""
    return os.path.realpath(os.path.join(cwd or os.getcwd(), path))


def command_allowed(command: str, patterns: Iterable[str], cwd: str | None = None) -> str | None:
    """The command's real path when it is an existing file and a pattern admits it, else None."""
    resolved = real_path(command, cwd)
    # Only a real file is matched: a name that exists nowhere (`examples/*.py` itself) is no program.
    if not os.path.isfile(resolved):
        return None
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
