"""Typed errors carrying the service's own message.

The service renders every error as JSON ``{"error": code, "detail": message}`` with its HTTP
status; :func:`error_from_response` turns that into one of the classes below (the one place that
maps a status to a class)."""

from __future__ import annotations

from typing import Any

import httpx


class HpoError(Exception):
    """Any error from the service or on the way to it.

    ``status`` is the HTTP status (None when there was no answer), ``error`` the service's short
    code (``not_found``, ``conflict``, ``invalid_request``...), ``detail`` its message."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        error: str | None = None,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.error = error
        self.method = method
        self.path = path
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        return f"{self.status} {self.error or 'error'}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, error={self.error!r}, detail={self.detail!r})"


class ServerUnreachable(HpoError):
    """No answer: the connection was refused, the name did not resolve, or the request timed out."""


class AuthError(HpoError):
    """401: no token, an unknown one, or one revoked or expired (403 is :class:`PermissionDeniedError`)."""


class PermissionDeniedError(AuthError):
    """403: a valid token whose role may not make this call (e.g. a viewer submitting a study)."""


class NotFoundError(HpoError):
    """404 (or 410): no such study in the token's team, or no such route on this server."""


class ConflictError(HpoError):
    """409: e.g. a study with this name already exists."""


class InvalidRequestError(HpoError):
    """400, 413, 415, 422: the request (usually the study definition) was refused; ``detail`` names the field."""


# The name most callers look for: a study definition the service refused.
InvalidDefinitionError = InvalidRequestError


class ServerError(HpoError):
    """5xx: the service failed."""


class ServiceUnavailable(ServerError):
    """503: the service's database is unavailable; retry after ``retry_after`` seconds."""


def error_class(status: int) -> type[HpoError]:
    if status == 401:
        return AuthError
    if status == 403:
        return PermissionDeniedError
    if status in (404, 410):
        return NotFoundError
    if status == 409:
        return ConflictError
    if status in (400, 413, 415, 422):
        return InvalidRequestError
    if status == 503:
        return ServiceUnavailable
    if status >= 500:
        return ServerError
    return HpoError


def error_from_response(response: httpx.Response) -> HpoError:
    """The typed error for an answer with status >= 400, with the service's code and message."""
    status = response.status_code
    code: str | None = None
    detail: str | None = None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("error") if isinstance(body.get("error"), str) else None
        raw = body.get("detail")
        detail = raw if isinstance(raw, str) else (None if raw is None else str(raw))
    if detail is None:
        # Not the service's JSON (a proxy's error page, ...): its text, shortened.
        detail = response.text.strip()[:500] or response.reason_phrase or "no detail"
    if code is None:
        code = (response.reason_phrase or "error").lower().replace(" ", "_")
    retry_after: float | None = None
    if "retry-after" in response.headers:
        try:
            retry_after = float(response.headers["retry-after"])
        except ValueError:
            retry_after = None
    try:
        method, path = response.request.method, response.request.url.path
    except RuntimeError:  # a response built without its request
        method = path = None
    return error_class(status)(detail, status=status, error=code, method=method, path=path, retry_after=retry_after)


class ConfigError(HpoError):
    """The client config file cannot be read (not YAML, not a mapping, ...)."""
