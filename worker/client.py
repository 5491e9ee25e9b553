"""The worker's HTTP client for the worker protocol (DESIGN.md). It holds a team token,
never database credentials."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from service.spec import Assignment, FinishState


class ServiceError(Exception):
    """The service refused a call; carries its status and message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class LeaseLost(ServiceError):
    """The trial is no longer this worker's: 409 (its lease expired, or the trial was retried or
    finished) or 404/410 (its study was deleted)."""


class ServiceClient:
    def __init__(self, server_url: str, token: str, *, timeout: float = 30.0, attempts: int = 5) -> None:
        self._http = httpx.Client(
            base_url=server_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self._attempts = attempts

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        # Connection errors and 5xx are retried with exponential backoff and jitter; every call
        # of the protocol is safe to repeat (the service deduplicates reports and finishes).
        delay = 0.2
        for attempt in range(self._attempts):
            try:
                response = self._http.post(path, json=body)
            except httpx.TransportError:
                if attempt == self._attempts - 1:
                    raise
            else:
                if response.status_code < 500 or attempt == self._attempts - 1:
                    return _checked(response)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def claim(self, worker_id: str, studies: list[str] | None = None) -> Assignment | None:
        response = self._post("/api/v1/trials/claim", {"worker_id": worker_id, "studies": studies})
        if response.status_code == 204:
            return None
        return Assignment.model_validate(response.json())

    def _trial_call(self, a: Assignment, call: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self._post(f"/api/v1/trials/{a.trial_id}/{call}", {"lease_id": a.lease_id, **body})
        except ServiceError as exc:
            if exc.status in (404, 410):
                raise LeaseLost(exc.status, exc.detail) from exc
            raise

    def report(self, a: Assignment, step: int, value: float) -> bool:
        response = self._trial_call(a, "report", {"step": step, "value": value})
        return bool(response.json()["prune"])

    def heartbeat(self, a: Assignment) -> None:
        self._trial_call(a, "heartbeat", {})

    def finish(
        self,
        a: Assignment,
        state: FinishState,
        value: float | None = None,
        error: str | None = None,
        reason: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """End the trial. `reason` (e.g. oom, diverged, timeout) and `metrics` (finite numbers) are
        sent only when given, so a service that predates them sees the same body as before."""
        body: dict[str, Any] = {"state": state, "value": value, "error": error}
        if reason is not None:
            body["reason"] = reason
        if metrics is not None:
            body["metrics"] = metrics
        self._trial_call(a, "finish", body)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 409:
        raise LeaseLost(409, detail)
    raise ServiceError(response.status_code, detail)
