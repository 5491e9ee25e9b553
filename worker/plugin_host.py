"""`python -m worker.plugin_host ENTRY`: the child process a worker runs a plugin trial in.

ENTRY is `package.module:function` (one plain function name) or the name of an entry point in
group `hpo.workloads`. Before anything is imported, the module's file and every package on the
way must lie inside the real directory of its top-level package (worker.workloads.allow), and
the function must be defined in that package; otherwise the trial fails `not_allowed`. The
function is called with the SDK's trial (worker.sdk.current_trial()); a number it returns is
the objective, None leaves the best reported value. An exception is sent to the worker with its
class (exception, oom, data) and traceback before the process exits 1; TrialPruned (ours or any
class of that name, such as optuna.TrialPruned) ends the trial as pruned. Being a separate
process, a segfault or os.abort() here ends this trial only.

The working directory is on sys.path (`-m` puts it there), so plugins next to the worker's
working directory import without being installed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from worker.sdk import Trial, TrialPruned, current_trial
from worker.workloads import allow, describe, failure_reason


def load(entry: str) -> Callable[[Trial], Any]:
    module_name, attribute = allow.resolve_entry(entry)
    # Checked before the import, with this process's own sys.path: the worker's check saw its
    # view of the path, and an out-of-tree module's import-time code must never run.
    origin = allow.plugin_origin(module_name)
    module = importlib.import_module(module_name)
    allow.require_loaded_from(module, origin)
    target: Any = module
    for part in attribute.split("."):  # one name for `module:function`; an entry point's may be dotted
        target = getattr(target, part)
    allow.require_defined_in(target, module_name, entry)
    if not callable(target):
        raise TypeError(f"{entry} is a {type(target).__name__}, not a function")
    return target


def _is_pruned(exc: BaseException) -> bool:
    return isinstance(exc, TrialPruned) or any(cls.__name__ == "TrialPruned" for cls in type(exc).__mro__)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m worker.plugin_host ENTRY", file=sys.stderr)
        return 2
    entry = argv[0]
    trial = current_trial()
    try:
        function = load(entry)
    except Exception as exc:
        _report_failure(trial, f"cannot load plugin entry {entry!r}", exc)
        return 1
    try:
        result = function(trial)
        if result is not None:
            if isinstance(result, (str, bytes, bool)):
                raise TypeError(f"{entry} returned {result!r}; expected a number or None")
            trial.set_value(float(result))
    except Exception as exc:
        if _is_pruned(exc):
            trial.prune()
            return 0
        _report_failure(trial, f"plugin {entry} failed", exc)
        return 1
    return 0


def _report_failure(trial: Trial, what: str, exc: BaseException) -> None:
    # The traceback from the user's code on; none when this module raised (a bad entry).
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    message = f"{what}: " + describe(exc.with_traceback(tb), with_traceback=tb is not None)
    print(message, file=sys.stderr)
    try:
        reason = "not_allowed" if isinstance(exc, allow.NotAllowed) else failure_reason(exc)
        trial._send({"op": "error", "reason": reason, "message": message})
    except Exception:  # the worker falls back on the exit status and stderr
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
