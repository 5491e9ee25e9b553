"""How one claimed trial is run: built-in models in the worker's process (builtin.py), the team's
own code in a child process (external.py, plugin_host.py), and what they hand back.

A trial ends in one of three states; `reason` says why when it did not simply complete or get
pruned by the pruner (stored by the service with the trial):

    diverged     NaN/inf loss, or the trainer's divergence guard (state pruned)
    oom          out of memory: CUDA, MemoryError, or the --trial-memory-mb cap
    data         the dataset was refused or unreadable
    exception    the training code raised
    interrupted  the worker was stopped (SIGTERM/Ctrl-C) mid-trial
    not_allowed  a plugin or command not on this worker's allowlist
    exit         a user process exited with a non-zero status
    crashed      a user process was killed by a signal (SIGABRT, SIGSEGV, ...)
    timeout      a user process ran past its timeout and was killed
    no_value     a user process exited 0 without reporting or setting a value
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the plugin host imports this module: no pydantic at run time
    from service.spec import FinishState

# The service keeps the first 2000 characters of an error; a traceback's end says the most.
ERROR_CHARS = 1900


@dataclass
class TrialOutcome:
    state: FinishState | None  # None: the lease was lost and the trial is no longer ours
    value: float | None = None
    error: str | None = None
    epochs: int = 0
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def failure_reason(exc: BaseException) -> str:
    """oom, data or exception, by the exception's type (and CUDA's message), without importing
    torch or the data module."""
    names = {(cls.__module__, cls.__name__) for cls in type(exc).__mro__}
    if isinstance(exc, MemoryError) or any(name == "OutOfMemoryError" for _, name in names):
        return "oom"
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
        return "oom"
    # worker.data.DataError (defined in worker.datafiles), matched by name: no heavy import here.
    if any(module.startswith("worker.") and name == "DataError" for module, name in names):
        return "data"
    return "exception"


def describe(exc: BaseException, *, with_traceback: bool = False) -> str:
    """The exception as text, cut to what the service keeps (keeping the end)."""
    if with_traceback:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        text = "".join(traceback.format_exception_only(type(exc), exc))
    return tail(text.strip())


def tail(text: str, limit: int = ERROR_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def finite_metrics(values: Mapping[str, object]) -> dict[str, float]:
    """Only real, finite numbers (bools and None dropped): the service stores them as floats."""
    out: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[str(name)] = float(value)
    return out
