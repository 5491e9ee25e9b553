"""The JSON bodies of optuna-dashboard's writes, checked before the dashboard sees them.

optuna-dashboard reads `request.json` and trusts it: a body that is not JSON (or not sent as
JSON) is None there and a 500, a string that PostgreSQL refuses (NUL, a lone surrogate) is a
500 DataError, and `"values": ["nan"]` is stored as a NaN result that breaks the study's page and
the REST API's readers. Each checker here takes the parsed body and returns the body to forward
(rebuilt from what was checked, so the dashboard reads exactly that) and the audit event's
detail; BodyError is the 4xx otherwise."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

# Optuna's key columns (trial_user_attributes.key and the like) are VARCHAR(512).
MAX_KEY_LENGTH = 512


class BodyError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _invalid(detail: str) -> BodyError:
    return BodyError(422, "invalid_request", detail)


def parse(content_type: str | None, body: bytes) -> dict[str, Any]:
    """The body as a JSON object: 415 unless it is sent as application/json (what Bottle's
    request.json reads), 400 unless it parses, 422 unless it is an object of storable strings."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise BodyError(415, "unsupported_media_type", f"send the body as application/json, not {media or 'nothing'}")
    try:
        parsed = json.loads(body or b"null")
    except RecursionError:
        raise _invalid("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BodyError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise _invalid(f"the body must be a JSON object, not {type(parsed).__name__}")
    _check_values(parsed)
    return parsed


def _check_values(parsed: Any) -> None:
    """Every string storable in PostgreSQL, every number finite; iterative, so any depth that
    json.loads took is fine here too."""
    pending = [parsed]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise _invalid("strings must not contain NUL (\\u0000)")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _invalid("strings must not contain lone surrogates") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise _invalid("numbers must be finite (no NaN, Infinity or values beyond float range)")


def _int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


def _finite(value: Any) -> float:
    """A value as optuna-dashboard's tell takes it (a number or a numeric string), if finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _invalid(f"values must be numbers, not {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf
    except ValueError:
        raise _invalid(f"values must be numbers, not {value!r}") from None
    if not math.isfinite(number):
        raise _invalid(f"values must be finite numbers (no NaN or infinity, nothing beyond float range), not {str(value)[:40]!r}")
    return number


def tell(body: dict[str, Any], n_objectives: int) -> tuple[dict[str, Any], dict[str, Any]]:
    state = body.get("state")
    if not isinstance(state, str) or state.lower() not in ("complete", "fail"):
        raise _invalid(f"state must be 'complete' or 'fail', not {state!r}")
    state = state.lower()
    if state == "fail":
        return {"state": "fail"}, {"state": "fail"}
    values = body.get("values")
    if not isinstance(values, list) or len(values) != n_objectives:
        raise _invalid(f"values must be a list of {n_objectives} number(s) when state is 'complete'")
    checked = [_finite(v) for v in values]
    return {"state": "complete", "values": checked}, {"state": "complete", "values": checked}


def note(body: dict[str, Any], _: int) -> tuple[dict[str, Any], dict[str, Any]]:
    version = _int(body.get("version"), "version", 1)
    text = body.get("body")
    if not isinstance(text, str):
        raise _invalid("body must be a string")
    return {"version": version, "body": text}, {"version": version, "length": len(text)}


def user_attrs(body: dict[str, Any], _: int) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs = body.get("user_attrs")
    if not isinstance(attrs, dict) or not attrs:
        raise _invalid("user_attrs must be a non-empty object")
    if any(len(k) > MAX_KEY_LENGTH for k in attrs):
        raise _invalid(f"user_attrs keys must be at most {MAX_KEY_LENGTH} characters")
    return {"user_attrs": attrs}, {"keys": sorted(attrs)}


def preference(body: dict[str, Any], _: int) -> tuple[dict[str, Any], dict[str, Any]]:
    if body.get("mode") != "ChooseWorst":
        raise _invalid("mode must be 'ChooseWorst'")
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise _invalid("candidates must be a non-empty list of trial numbers")
    checked = [_int(c, "candidates[]") for c in candidates]
    clicked = _int(body.get("clicked"), "clicked")
    if clicked not in checked:
        raise _invalid("clicked must be one of the candidates")
    out = {"mode": "ChooseWorst", "candidates": checked, "clicked": clicked}
    return out, {"candidates": checked, "clicked": clicked}


def feedback_component(body: dict[str, Any], _: int) -> tuple[dict[str, Any], dict[str, Any]]:
    kind = body.get("output_type")
    key = body.get("artifact_key")
    if kind not in ("note", "artifact"):
        raise _invalid("output_type must be 'note' or 'artifact'")
    if key is not None and not isinstance(key, str):
        raise _invalid("artifact_key must be a string")
    return {"output_type": kind, "artifact_key": key}, {"output_type": kind}


# The checker of each route's body (dashboard_routes.Route.body); the int is the study's number
# of objectives.
CHECKERS: dict[str, Callable[[dict[str, Any], int], tuple[dict[str, Any], dict[str, Any]]]] = {
    "tell": tell,
    "note": note,
    "user_attrs": user_attrs,
    "preference": preference,
    "feedback_component": feedback_component,
}
