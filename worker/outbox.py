"""One trial's reports on their way to the service, kept through outages ("nothing lost").

A report (or a report with checkpoint bytes) that still fails after the client's retries is
queued, and the trial trains on. Each later report first delivers the queue, oldest first, with
its own step numbers, then itself; while the service is still away those attempts are single
ones (no retry waits), so training does not pause again. The prune answer is the one to the latest
report delivered. A newer checkpoint supersedes queued ones: their bytes are dropped, their
values are still reported. Before the trial is finished the runner drains the queue (`drain`).

A lost lease (409) or a deleted study (404/410) raises LeaseLost at once: the queue no longer
matters. A report the service refuses for good (another 4xx) is dropped with an error in the log;
a checkpoint it refuses (e.g. 413, too large) is sent again as a plain report, and checkpoints
are turned off for the rest of the trial.

With `ack_log`, every report the service acknowledged (HTTP 200) is appended to that file as
one JSON line {trial_id, number, study, step, value, worker_id}, flushed at once (the chaos
harness compares it with what the service stored)."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.spec import Assignment
from worker.client import LeaseLost, ProtocolError

log = logging.getLogger("hpo.worker")


def refused(exc: BaseException) -> bool:
    """The service said no for good (a 4xx other than 408/429). Anything else (a connection
    error, 5xx, a timeout) may go through later. LeaseLost is handled before this is asked."""
    return isinstance(exc, ProtocolError) and not exc.transient


@dataclass
class _Entry:
    step: int
    value: float
    data: bytes | None  # checkpoint bytes; None for a plain report


class Outbox:
    def __init__(
        self,
        client: Any,
        a: Assignment,
        *,
        worker_id: str | None = None,
        ack_log: Path | None = None,
        first_delay: float = 0.5,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.a = a
        self.worker_id = worker_id
        self.ack_log = ack_log
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.clock = clock
        self.queue: deque[_Entry] = deque()
        self.checkpoints = True  # False once the service refused a checkpoint
        self.delivered = 0
        self.dropped = 0
        self.last_prune = False
        self._ack_log_failed = False
        self._outage_since: int | None = None  # the first queued step of the current outage

    @property
    def pending(self) -> int:
        return len(self.queue)

    def send(self, step: int, value: float, data: bytes | None = None) -> bool:
        """Report `value` at `step` (with checkpoint bytes `data`), after whatever is queued.
        Returns the prune answer to the latest report delivered now; False when none got through.
        Raises LeaseLost."""
        if data is not None and not self.checkpoints:
            data = None
        if data is not None:
            for entry in self.queue:
                entry.data = None  # superseded: this epoch's checkpoint is the one to keep
        outage = bool(self.queue)
        self.queue.append(_Entry(step, value, data))
        # Queue empty: the client's full (lease-bounded) retries. Already in an outage: one try.
        return self._flush(0.0 if outage else None)

    def drain(self, deadline: float) -> bool:
        """Deliver the whole queue, retrying with backoff until the monotonic `deadline`; True
        when nothing is left. Raises LeaseLost."""
        delay = self.first_delay
        while self.queue:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            self._flush(remaining)
            if self.queue:
                self.sleep(max(0.0, min(delay, deadline - self.clock())))
                delay = min(delay * 2, self.max_delay)
        return True

    def _flush(self, retry_for: float | None) -> bool:
        prune: bool | None = None
        while self.queue:
            entry = self.queue[0]
            try:
                answer = self._deliver(entry, retry_for)
            except LeaseLost:
                raise
            except Exception as exc:
                if refused(exc) and entry.data is not None:
                    log.warning(
                        "trial %s#%d: the service refused a checkpoint (%s); reporting without checkpoints from now on",
                        self.a.study, self.a.number, exc,
                    )
                    self.checkpoints = False
                    for queued in self.queue:
                        queued.data = None
                    continue
                if refused(exc):
                    log.error(
                        "trial %s#%d: the service refused the report of step %d (%s); dropped",
                        self.a.study, self.a.number, entry.step, exc,
                    )
                    self.queue.popleft()
                    self.dropped += 1
                    continue
                if self._outage_since is None:
                    self._outage_since = entry.step
                    log.warning(
                        "trial %s#%d: the service is unreachable (%s); reports are queued from step %d, training goes on",
                        self.a.study, self.a.number, exc, entry.step,
                    )
                break
            self.queue.popleft()
            self.delivered += 1
            prune = answer
            self._acknowledged(entry)
        if self._outage_since is not None and not self.queue:
            log.info(
                "trial %s#%d: the service answers again; the queued reports from step %d on are delivered",
                self.a.study, self.a.number, self._outage_since,
            )
            self._outage_since = None
        if prune is None:
            return False
        self.last_prune = prune
        return prune

    def _deliver(self, entry: _Entry, retry_for: float | None) -> bool:
        # retry_for only when set: a client (or test double) without the keyword still works.
        extra: dict[str, Any] = {} if retry_for is None else {"retry_for": retry_for}
        if entry.data is not None:
            return bool(self.client.checkpoint(self.a, entry.step, entry.value, entry.data, **extra))
        return bool(self.client.report(self.a, entry.step, entry.value, **extra))

    def _acknowledged(self, entry: _Entry) -> None:
        if self.ack_log is None:
            return
        line = {
            "trial_id": self.a.trial_id,
            "number": self.a.number,
            "study": self.a.study,
            "step": entry.step,
            "value": entry.value,
            "worker_id": self.worker_id,
        }
        try:
            # Opened, appended and flushed per line: a worker killed at any moment leaves at most
            # a partial last line.
            self.ack_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.ack_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
        except OSError as exc:
            if not self._ack_log_failed:
                log.warning("cannot append to the ack log %s: %s", self.ack_log, exc)
                self._ack_log_failed = True
