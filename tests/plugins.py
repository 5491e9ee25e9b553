"""Plugin functions the user-workload tests run through real workers (entry `tests.plugins:...`).

Standard library only: they run in the worker's child process, some under a memory cap."""

from __future__ import annotations

import os
import resource

from worker.sdk import Trial

HOG_BYTES = 8 * 2**30  # far beyond the cap the tests set; touched page by page if it is granted


MODES = ("raise", "abort", "hog", "ok")


def modes(trial: Trial) -> float | None:
    """raise | abort | hog | ok: the trial's `mode` param, else by trial number (in that order)."""
    mode = trial.params.get("mode") or MODES[trial.number % len(MODES)]
    if mode == "raise":
        raise ValueError("boom from the plugin")
    if mode == "abort":
        os.abort()
    if mode == "hog":
        block = bytearray(HOG_BYTES)
        return float(len(block))
    trial.report(1.0, 1)
    trial.report(0.5, 2)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    trial.set_metrics(rlimit_as_mb=-1.0 if soft == resource.RLIM_INFINITY else soft / 2**20)
    return 0.25


def quadratic(trial: Trial) -> float:
    return (float(trial.params["x"]) - 1.0) ** 2


def two_objectives(trial: Trial) -> None:
    """A study with objectives `error` and `size`: by name (a mapping) for trial 0, in the
    objectives' order (a list) for the others."""
    x = float(trial.params["x"])
    trial.report((x - 1.0) ** 2 + 1.0, 1)
    if trial.number == 0:
        trial.set_value({"error": (x - 1.0) ** 2, "size": abs(x)})
    else:
        trial.set_value([(x - 1.0) ** 2, abs(x)])
