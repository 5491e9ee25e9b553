"""When this process last failed to reach the database, seen where it happens: on the
connections of its engines (ours and Optuna's storage's), whichever call made them."""

from __future__ import annotations

import math
import time

from sqlalchemy import Engine, event

from service.engine.storage import database_down


class Outages:
    """Workers keep training through an outage but cannot heartbeat, so right after it every
    heartbeat looks stale. Reaping waits one grace period after the last failure this process
    saw, so those workers' next calls get through instead of being fenced off.

    A connection refused or lost counts; an exhausted pool does not (the database is there, and
    the calls that waited get through or are answered 503 and retried well within a grace
    period), nor does a deadlock (the database picked a victim: retried at once)."""

    def __init__(self) -> None:
        self._last = -math.inf

    def note(self) -> None:
        self._last = time.monotonic()

    def settled(self, grace_seconds: float) -> bool:
        return time.monotonic() - self._last > grace_seconds

    def watch(self, engine: Engine) -> None:
        """Note every connection failure on this engine (SQLAlchemy calls handle_error for a
        failed connect as well as a failed statement)."""

        def noted(context: object) -> None:
            if database_down(getattr(context, "original_exception", None)):
                self.note()

        event.listen(engine, "handle_error", noted)
