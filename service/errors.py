"""One error hierarchy; each class carries its HTTP status. The API renders them in one handler
as {"error": code, "detail": message}."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str] | None:
        """Response headers that go with this error, if any."""
        return None


class Unauthorized(ServiceError):
    """No token, an unknown one, or one that was revoked or has expired."""

    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A valid token whose role may not make this call."""

    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class LeaseLost(Conflict):
    """The caller's lease is not the trial's current lease: fencing for zombie workers."""

    code = "lease_lost"


class StudyBroken(Conflict):
    """The study cannot be served as stored (its definition no longer validates, ...)."""

    code = "study_broken"


class PayloadTooLarge(ServiceError):
    """The request body is over its size limit (HPO_MAX_BODY_BYTES, HPO_MAX_CHECKPOINT_BYTES)."""

    status_code = 413
    code = "payload_too_large"


class RequestTimeout(ServiceError):
    """The request body stopped arriving (HPO_BODY_TIMEOUT_SECONDS)."""

    status_code = 408
    code = "request_timeout"


class TooManyRequests(ServiceError):
    """Too many refused tokens from the caller's address (HPO_AUTH_FAILURES_PER_MINUTE)."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)}


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidRequest(ServiceError):
    status_code = 422
    code = "invalid_request"


class Gone(ServiceError):
    """The trial's study was deleted: the worker should drop the trial and claim other work."""

    status_code = 410
    code = "gone"


class ServiceUnavailable(ServiceError):
    """The database cannot be reached; the caller should retry after `retry_after` seconds."""

    status_code = 503
    code = "unavailable"
    retry_after = 5

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)}
