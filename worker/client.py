"""The worker's HTTP client for the worker protocol (DESIGN.md). It holds a team token,
never database credentials.

Every call of the protocol is safe to repeat (the service deduplicates reports, checkpoints and
finishes), so connection errors and 5xx (also 408 and 429) are retried with exponential backoff
and jitter, waiting at least what a `Retry-After` header asks for (the service sends one with 503
while its database is down). Retrying is bounded in time, not in attempts: a trial call retries
for up to its lease (`lease_seconds`), other calls for `retry_for` seconds, and then raises, so
the caller decides (the runner queues a report and trains on, see worker/outbox.py). A call may
pass its own `retry_for`; 0 makes a single attempt."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from service.spec import Assignment, FinishState

# Besides 5xx: these say "not now", not "no".
RETRY_STATUSES = frozenset({408, 429})
# The longest a Retry-After is taken at its word (a clock-skewed HTTP date must not stall a worker).
MAX_RETRY_AFTER = 300.0


class ProtocolError(Exception):
    """The service refused a call; carries its status and message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def transient(self) -> bool:
        """Whether the same call may succeed later (the service or its database is away)."""
        return self.status >= 500 or self.status in RETRY_STATUSES


class LeaseLost(ProtocolError):
    """The trial is no longer this worker's: 409 (its lease expired, or the trial was retried or
    finished) or 404/410 (its study was deleted)."""


class ServiceClient:
    def __init__(
        self,
        server_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        retry_for: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=server_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )
        self.retry_for = retry_for
        self.first_delay = 0.2
        self.max_delay = 5.0
        # Tests replace these to run the backoff without waiting.
        self.sleep: Callable[[float], None] = time.sleep
        self.clock: Callable[[], float] = time.monotonic

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, retry_for: float, **kwargs: Any) -> httpx.Response:
        """Send, retrying transient failures until `retry_for` seconds have passed; then the
        last failure is raised (a TransportError, or a ProtocolError for the last status)."""
        deadline = self.clock() + max(retry_for, 0.0)
        delay = self.first_delay
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if self.clock() >= deadline:
                    raise
                wait = delay * (1 + random.random())
            else:
                status = response.status_code
                if (status < 500 and status not in RETRY_STATUSES) or self.clock() >= deadline:
                    return _checked(response)
                wait = delay * (1 + random.random())
                asked = _retry_after(response)
                if asked is not None:
                    # At least what the service asked for, plus a little jitter so a pool of
                    # workers does not come back in the same instant.
                    wait = asked * (1 + 0.25 * random.random())
            # The last attempt is made at the deadline, not skipped because a wait overshoots it.
            self.sleep(max(0.0, min(wait, deadline - self.clock())))
            delay = min(delay * 2, self.max_delay)

    def claim(self, worker_id: str, studies: list[str] | None = None) -> Assignment | None:
        response = self._request(
            "POST", "/api/v1/trials/claim", json={"worker_id": worker_id, "studies": studies}, retry_for=self.retry_for
        )
        if response.status_code == 204:
            return None
        return Assignment.model_validate(response.json())

    def claim_group(
        self, worker_id: str, studies: list[str] | None, max_trials: int, like: Assignment | None = None
    ) -> tuple[list[Assignment], str | None] | None:
        """Up to `max_trials` trials to train fused, and why they train alone when they must
        (`hpo worker --fuse K`); None when there is no work. `like`: a running member of the
        worker's group, to claim only trials that fuse with it (LeaseLost if it is no longer ours)."""
        body: dict[str, Any] = {"worker_id": worker_id, "studies": studies, "max_trials": max_trials}
        if like is not None:
            body["like"] = {"trial_id": like.trial_id, "lease_id": like.lease_id}
        try:
            response = self._request("POST", "/api/v1/trials/claim-group", json=body, retry_for=self.retry_for)
        except ProtocolError as exc:
            if like is not None and exc.status in (404, 410):
                raise LeaseLost(exc.status, exc.detail) from exc
            raise
        if response.status_code == 204:
            return None
        answer = response.json()
        return [Assignment.model_validate(a) for a in answer["assignments"]], answer.get("alone")

    def _trial_call(
        self, a: Assignment, method: str, call: str, *, retry_for: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        try:
            return self._request(
                method,
                f"/api/v1/trials/{a.trial_id}/{call}",
                retry_for=a.lease_seconds if retry_for is None else retry_for,
                **kwargs,
            )
        except ProtocolError as exc:
            if exc.status in (404, 410):
                raise LeaseLost(exc.status, exc.detail) from exc
            raise

    def report(self, a: Assignment, step: int, value: float, *, retry_for: float | None = None) -> bool:
        """Record the value of `step`; True when the pruner says stop."""
        response = self._trial_call(
            a, "POST", "report", json={"lease_id": a.lease_id, "step": step, "value": value}, retry_for=retry_for
        )
        return bool(response.json()["prune"])

    def checkpoint(self, a: Assignment, step: int, value: float, data: bytes, *, retry_for: float | None = None) -> bool:
        """Store checkpoint bytes and record the value of `step` in one call (like `report`, and
        answered like it: True when the pruner says stop)."""
        response = self._trial_call(
            a,
            "POST",
            "checkpoint",
            # The lease in a header, not the query: it stays out of the API's access log.
            params={"step": step, "value": repr(float(value))},
            content=data,
            headers={"Content-Type": "application/octet-stream", "X-HPO-Lease": a.lease_id},
            retry_for=retry_for,
        )
        return bool(response.json()["prune"])

    def fetch_checkpoint(self, a: Assignment, *, retry_for: float | None = None) -> tuple[int, bytes] | None:
        """The (step, bytes) this retried trial should resume from, or None when there is none."""
        response = self._trial_call(a, "GET", "checkpoint", headers={"X-HPO-Lease": a.lease_id}, retry_for=retry_for)
        if response.status_code == 204:
            return None
        step = response.headers.get("X-HPO-Step")
        if step is None:
            raise ProtocolError(response.status_code, "a checkpoint came without its X-HPO-Step header")
        return int(step), response.content

    def heartbeat(self, a: Assignment, *, retry_for: float | None = None) -> None:
        self._trial_call(a, "POST", "heartbeat", json={"lease_id": a.lease_id}, retry_for=retry_for)

    def finish(
        self,
        a: Assignment,
        state: FinishState,
        value: float | None = None,
        error: str | None = None,
        reason: str | None = None,
        metrics: dict[str, float] | None = None,
        *,
        retry_for: float | None = None,
    ) -> None:
        """End the trial. `reason` (e.g. oom, diverged, timeout) and `metrics` (finite numbers) are
        sent only when given, so a service that predates them sees the same body as before."""
        body: dict[str, Any] = {"lease_id": a.lease_id, "state": state, "value": value, "error": error}
        if reason is not None:
            body["reason"] = reason
        if metrics is not None:
            body["metrics"] = metrics
        self._trial_call(a, "POST", "finish", json=body, retry_for=retry_for)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if there is one."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    if response.status_code == 409:
        raise LeaseLost(409, detail)
    raise ProtocolError(response.status_code, detail)
