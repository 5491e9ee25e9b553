"""The SDK for user workloads (plugin functions and command scripts) run by an hpo worker.

    from worker.sdk import current_trial

    trial = current_trial()
    lr = trial.params["lr"]
    for epoch in range(1, 11):
        loss = train_one_epoch(lr)
        if trial.report(loss, epoch):   # True: the service's pruner says stop
            sys.exit(0)                 # the trial ends as pruned
    trial.set_value(loss)               # optional; otherwise the best reported value counts

The user process never sees the team token: it talks to its own worker over a pair of pipes
(HPO_SDK_FDS="<read_fd>,<write_fd>"), and the worker relays to the service under its lease.
The protocol is one JSON object per line each way; every request gets one answer line:

    {"op": "report", "step": 3, "value": 0.41}       -> {"prune": false}
    {"op": "value", "value": 0.39}                     -> {"ok": true}    the objective
    {"op": "metrics", "metrics": {"acc": 0.91}}        -> {"ok": true}    sent at finish
    {"op": "pruned"}                                   -> {"ok": true}    the code prunes itself
    {"op": "error", "reason": "oom", "message": "..."} -> {"ok": true}    (the plugin host)
    anything malformed                                 -> {"error": "..."}

The trial's description is the JSON file named by HPO_TRIAL_FILE: trial_id, study, number,
params, workload, direction, device, data_root. Params are also in the environment as
HPO_PARAM_<NAME> (upper-cased name, str() of the value) for scripts in other languages.

Standard library only (no torch): a plugin's process imports this before the user's code.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Trial", "TrialPruned", "current_trial"]


class TrialPruned(Exception):
    """Raise from a plugin function (or let it escape a script run through the plugin host) to end
    the trial as pruned. Exiting with status 0 after a report answered True does the same."""


class _Channel:
    """Blocking request/answer lines over two pipe ends inherited from the worker."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._buffer = b""
        self._lock = threading.Lock()

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        data = (json.dumps(message) + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._write_fd, view)
                view = view[written:]
            while b"\n" not in self._buffer:
                chunk = os.read(self._read_fd, 65536)
                if not chunk:
                    raise ConnectionError("the hpo worker closed the trial's channel")
                self._buffer += chunk
            line, _, self._buffer = self._buffer.partition(b"\n")
        answer = json.loads(line)
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer


class Trial:
    """The trial this process runs: its params and the way back to the service."""

    def __init__(self, info: Mapping[str, Any], channel: _Channel | None) -> None:
        self.trial_id: int = info["trial_id"]
        self.study: str = info["study"]
        self.number: int = info["number"]
        self.params: dict[str, Any] = dict(info["params"])
        self.workload: dict[str, Any] = dict(info.get("workload") or {})
        self.direction: str = info.get("direction", "minimize")
        # A multi-objective study's objective names, in order (None: one objective).
        self.objectives: list[str] | None = info.get("objectives")
        self.device: str = info.get("device", "cpu")
        self.data_root: str | None = info.get("data_root")
        self._channel = channel
        self._prune = False

    def __repr__(self) -> str:
        return f"Trial(study={self.study!r}, number={self.number}, params={self.params!r})"

    def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._channel is None:
            raise RuntimeError("this trial has no channel to an hpo worker (HPO_SDK_FDS is not set)")
        return self._channel.request(message)

    def report(self, value: float, step: int) -> bool:
        """Record an intermediate value (e.g. the validation loss after epoch `step`); answers
        whether the trial should stop. A NaN or infinite value ends the trial as diverged."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        value = float(value)
        # json writes NaN/Infinity tokens, which the worker reads back as floats.
        self._prune = bool(self._send({"op": "report", "step": step, "value": value})["prune"])
        return self._prune

    def should_prune(self) -> bool:
        """The answer to the last report (False before any)."""
        return self._prune

    def set_value(self, value: float | Mapping[str, float] | Sequence[float]) -> None:
        """The trial's objective; without it the best reported value counts. NaN or inf ends the
        trial as diverged. A study with several objectives takes them by name, as a mapping
        ({"error": 0.1, "latency_ms": 12.0}), or as a list in the objectives' order
        (`trial.objectives`); they travel as the trial's metrics, which is where the service
        reads each objective (and each constraint) from."""
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not self.objectives or len(self.objectives) != len(value):
                raise ValueError(f"a list of values needs one per objective of the study: {self.objectives or 'it has one'}")
            value = dict(zip(self.objectives, value))
        if isinstance(value, Mapping):
            self.set_metrics(value)
            return
        self._send({"op": "value", "value": float(value)})

    def set_metrics(self, metrics: Mapping[str, float] | None = None, /, **more: float) -> None:
        """Extra numbers stored with the trial when it finishes (later calls add and overwrite)."""
        merged = {**(metrics or {}), **more}
        values = {str(k): float(v) for k, v in merged.items()}
        self._send({"op": "metrics", "metrics": {k: v for k, v in values.items() if math.isfinite(v)}})

    def prune(self) -> None:
        """Tell the worker this trial prunes itself; exit (status 0) afterwards."""
        self._send({"op": "pruned"})
        self._prune = True


_current: Trial | None = None


def current_trial() -> Trial:
    """The trial this process was started for by an hpo worker (plugin or command workload)."""
    global _current
    if _current is None:
        # The user process's interface is its environment, set by the worker for this trial.
        path = os.environ.get("HPO_TRIAL_FILE")
        if not path:
            raise RuntimeError("not running under an hpo worker: HPO_TRIAL_FILE is not set")
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        fds = os.environ.get("HPO_SDK_FDS")
        channel = None
        if fds:
            read_fd, write_fd = (int(x) for x in fds.split(","))
            channel = _Channel(read_fd, write_fd)
        _current = Trial(info, channel)
    return _current
