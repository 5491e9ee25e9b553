"""Bounds on what a definition may ask of the service, and the text every stored string obeys.

A study definition is user input that turns into memory, CPU and rows in the API process and in
PostgreSQL on every claim. Each bound here is documented in the README's limits table; a
definition over one is refused at creation (422 naming the field, the size and the bound), so a
stored study can never be one that a claim cannot serve."""

from __future__ import annotations

from typing import Any

# A grid sampler's points (the product of its axes): claims index into the grid, but Optuna
# still keeps a shuffled order of its points (8 bytes each) per claim.
MAX_GRID_POINTS = 100_000
# Values of one categorical, and of one grid axis: every trial stores its distribution (all of
# its choices) in Optuna's tables, and the trials listing returns it per trial.
MAX_CHOICES = 1_000
# Choices of all categoricals of the space together (conditional cases included).
MAX_SPACE_CHOICES = 4_000
# Parameters in a space.
MAX_PARAMS = 64
# A string choice's length.
MAX_CHOICE_CHARS = 200
# Integers Optuna keeps exactly: it stores every parameter as a float.
MAX_INT = 2**53
# Steps of a float range with a step: Optuna counts them with Decimal arithmetic per claim.
MAX_FLOAT_STEPS = 2**53
# Seeds the samplers take (numpy's): a seed advances by one per claim, up to n_trials.
MAX_SEED = 2**32 - 1
# Nesting of a definition or any JSON body: far deeper than any real definition, far shallower
# than Python's recursion limit.
MAX_DEPTH = 32


def bad_text(value: str) -> str | None:
    """Why PostgreSQL would refuse this string (text and jsonb take no NUL, jsonb no lone
    surrogate, and UTF-8 encodes none), or None when it is fine."""
    if "\x00" in value:
        return "may not contain NUL (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "may not contain unpaired surrogates (\\ud800-\\udfff)"
    return None


def clean_text(value: str) -> str:
    """The string with what PostgreSQL refuses replaced by U+FFFD: for text a worker relays
    rather than writes (a crashing library's stderr), which must be stored, not refused."""
    if bad_text(value) is None:
        return value
    # A str holds code points, so any surrogate in it is a lone one (a pair would be one point).
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value)


def check_document(data: Any, where: str = "") -> None:
    """ValueError naming the first place in parsed JSON/YAML that nests deeper than MAX_DEPTH or
    holds a string (value or key) that bad_text refuses. Iterative: depth is what it checks."""
    stack: list[tuple[Any, str, int]] = [(data, where, 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{path or 'body'}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, str):
            why = bad_text(node)
            if why is not None:
                raise ValueError(f"{path or 'body'}: text {why}")
        elif isinstance(node, dict):
            for key, value in node.items():
                name = str(key)
                why = bad_text(name)
                if why is not None:
                    raise ValueError(f"{path or 'body'}: a key {why}")
                stack.append((value, f"{path}.{name}" if path else name, depth + 1))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                stack.append((value, f"{path}.{i}" if path else str(i), depth + 1))


def has_control_character(text: str) -> bool:
    """C0, DEL and C1 controls, and the Unicode line and paragraph separators: in no name of
    ours, nor in any route of optuna-dashboard's (whose Bottle routes end in `$`, which also
    matches before a final newline)."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in text)
