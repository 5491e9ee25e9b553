"""The worker's side of the SDK channel (worker/sdk.py) for one plugin or command trial: the
child's requests answered, its reports relayed to the service through the trial's outbox."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from service.spec import Assignment
from worker.client import ServiceClient
from worker.outbox import Outbox
from worker.workloads import finite_metrics

MAX_USER_METRICS = 40
KNOWN_REASONS = frozenset({"exception", "oom", "data", "not_allowed"})  # what the plugin host may report


class _Relay:
    """The worker's side of the SDK channel for one trial."""

    def __init__(
        self, a: Assignment, client: ServiceClient, lease_lost: threading.Event, outbox: Outbox | None = None
    ) -> None:
        self.a = a
        self.client = client
        # Reports go through the trial's outbox: queued (and the child told "go on") while the
        # service is away, delivered in order when it answers again.
        self.outbox = outbox if outbox is not None else Outbox(client, a)
        self.lease_lost = lease_lost
        self._better = min if a.direction == "minimize" else max
        self.best: float | None = None
        self.reports = 0
        self.last_prune = False
        self.self_pruned = False
        self.value: float | None = None
        self.diverged: str | None = None
        self.diverged_at: float | None = None
        self.error: tuple[str, str] | None = None  # (reason, message) from the plugin host
        self.metrics: dict[str, float] = {}
        self.lost = False
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Complete request lines in the data read so far."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line for line in lines if line.strip()]

    def _diverge(self, why: str) -> None:
        if self.diverged is None:
            self.diverged = why
            self.diverged_at = time.monotonic()

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            return {"error": "not a JSON object"}
        if not isinstance(message, dict):
            return {"error": "not a JSON object"}
        op = message.get("op")
        if op == "report":
            return self._report(message)
        if op == "value":
            value = message.get("value")
            if not _is_number(value):
                return {"error": f"value must be a number, got {value!r}"}
            if not math.isfinite(value):
                self._diverge(f"the objective is {value}")
            else:
                self.value = float(value)
            return {"ok": True}
        if op == "metrics":
            metrics = message.get("metrics")
            if not isinstance(metrics, dict):
                return {"error": "metrics must be an object of names to numbers"}
            # What the service accepts: up to 50 names of up to 64 characters ("reports" is ours).
            for name, number in finite_metrics(metrics).items():
                if len(name) <= 64 and (name in self.metrics or len(self.metrics) < MAX_USER_METRICS):
                    self.metrics[name] = number
            return {"ok": True}
        if op == "pruned":
            self.self_pruned = True
            return {"ok": True}
        if op == "error":
            reason = message.get("reason")
            self.error = (reason if reason in KNOWN_REASONS else "exception", str(message.get("message") or ""))
            return {"ok": True}
        return {"error": f"unknown op {op!r}; expected report, value, metrics, pruned or error"}

    def _report(self, message: dict[str, Any]) -> dict[str, Any]:
        step, value = message.get("step"), message.get("value")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return {"error": f"step must be an int >= 0, got {step!r}"}
        if not _is_number(value):
            return {"error": f"value must be a number, got {value!r}"}
        if self.diverged is not None:
            return {"prune": True}
        if not math.isfinite(value):
            # Not a value Optuna can rank: the run diverged; it gets no more device time.
            self._diverge(f"reported value is {value} at step {step}")
            return {"prune": True}
        value = float(value)
        self.last_prune = self.outbox.send(step, value)  # LeaseLost propagates
        self.reports += 1
        self.best = value if self.best is None else self._better(self.best, value)
        return {"prune": self.last_prune}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
