"""What /dashboard does with a request for optuna-dashboard, once the caller has a session (and
the role, for a write): refuse it, answer it here, or forward it, canonical path and checked body
and all, with the audit event to record once optuna-dashboard has answered 2xx.

- not on the allow-list (service/api/dashboard_routes.py): 404;
- another team's study or trial, or a trial that is not in the study named with it: 404;
- create and rename: 409, they stay with the REST API;
- DELETE of a study: our own delete, audited (studies.delete where the study has a REST record);
- writes: the body must be JSON and pass its checker (service/api/dashboard_bodies.py);
  telling or tagging a finished trial is 409 (optuna-dashboard would answer 500).

Blocking (database reads): called on a worker thread."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import QueryParams
from starlette.responses import Response

from service.api.dashboard_bodies import CHECKERS, BodyError, parse
from service.api.dashboard_routes import CREATE, DELETE, PLOT, PLOT_TYPES, READ, RENAME, Match, canonical, match
from service.api.deps import Runtime
from service.api.errors import render
from service.db import audit
from service.db.studies import get_study
from service.db.teams import Principal
from service.engine import studies
from service.engine.team_storage import TeamStorage
from service.errors import ServiceError

log = logging.getLogger("hpo.dashboard")

PREFIX = "/dashboard"
# optuna-dashboard's mark of a preferential (human-in-the-loop) study.
PREFERENTIAL = "preference:is_preferential"
# Writes to a trial that optuna-dashboard makes through check_trial_is_updatable.
_ONLY_WHILE_RUNNING = ("dashboard.tell", "dashboard.user_attrs")


@dataclass
class Event:
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Forward:
    """Let optuna-dashboard answer, at this (canonical) path; `body` replaces the request's (None:
    the request has none); `event` is recorded when the answer is 2xx."""

    path: str
    body: bytes | None = None
    event: Event | None = None


def decide(
    runtime: Runtime, storage: TeamStorage, caller: Principal, method: str, path: str, query: QueryParams, content_type: str | None, body: bytes
) -> Response | Forward:
    path = canonical(path)
    found = match(method, path)
    if found is None:
        return render(404, "not_found", f"no dashboard route {method} {PREFIX}{path}")
    missing = render(404, "not_found", f"no such study or trial: {PREFIX}{path}")
    try:
        if not _owned(storage, found):
            return missing
        kind = found.route.kind
        if kind in (CREATE, RENAME):
            return render(409, "conflict", "studies are created and named through the REST API (POST /api/v1/studies), not in the dashboard")
        if kind == DELETE:
            assert found.study is not None
            return _delete(runtime, storage, caller, found.study)
        if kind == PLOT:
            return _plot(storage, found, path)
        if kind == READ:
            bad = _bad_query(found, query)
            return render(400, "bad_request", bad) if bad else Forward(path)
        return _write(storage, found, path, content_type, body)
    except KeyError:  # the study or trial went away meanwhile
        return missing
    except ServiceError as exc:
        return render(exc.status_code, exc.code, exc.detail, exc.headers())


def record(runtime: Runtime, caller: Principal, event: Event) -> None:
    with runtime.transaction() as session:
        audit.record(session, caller.team.id, event.action, event.target, actor=caller.prefix, role=caller.role, detail=event.detail)


def _owned(storage: TeamStorage, found: Match) -> bool:
    if found.study is not None and not storage.owns_study(found.study):
        return False
    if found.trial is not None:
        study = storage.study_of_trial(found.trial)
        if study is None or not storage.owns_study(study) or (found.study is not None and study != found.study):
            return False
    return True


def _short(optuna_name: str) -> str:
    return optuna_name.split("/", 1)[1]


def _delete(runtime: Runtime, storage: TeamStorage, caller: Principal, study_id: int) -> Response:
    with runtime.transaction() as session:
        name = storage.get_study_name_from_id(study_id)
        record = get_study(session, caller.team.id, _short(name), lock=True)
        detail = {"optuna_name": name, "via": "dashboard", "rest_record": record is not None}
        audit.record(session, caller.team.id, "study.delete", _short(name), actor=caller.prefix, role=caller.role, detail=detail)
        if record is not None:
            studies.delete(session, runtime.storage, record)
        else:
            # Made outside the REST API (plain Optuna under the team's prefix): nothing of ours
            # to remove; TeamStorage refuses if a REST record has appeared meanwhile.
            storage.delete_study(study_id)
    return Response(status_code=204)


def _plot(storage: TeamStorage, found: Match, path: str) -> Response | Forward:
    if importlib.util.find_spec("plotly") is None:
        return render(404, "not_found", "plotly is not installed on this server: the dashboard draws its plots in the browser")
    if found.plot not in PLOT_TYPES:
        return render(404, "not_found", f"no plot {found.plot!r}; one of {', '.join(PLOT_TYPES)}")
    assert found.study is not None
    if found.plot == "pareto_front" and len(storage.get_study_directions(found.study)) < 2:
        return render(400, "bad_request", "a Pareto front needs a study with two or more objectives")
    return Forward(path)


def _bad_query(found: Match, query: QueryParams) -> str | None:
    """What optuna-dashboard would answer 500 to in a read's query string."""
    rule = found.route.rule
    if rule == "/api/studies/<study_id:int>" and not all(re.fullmatch(r"[0-9]{1,9}", v) for v in query.getlist("after")):
        return "after must be a trial count: an integer >= 0"
    if rule == "/csv/<study_id:int>" and not all(re.fullmatch(r"[0-9, ]{0,10000}", v) for v in query.getlist("trial_ids")):
        return "trial_ids must be trial numbers separated by commas"
    return None


def _write(storage: TeamStorage, found: Match, path: str, content_type: str | None, body: bytes) -> Response | Forward:
    route = found.route
    assert route.action is not None
    study_id = found.study if found.study is not None else storage.study_of_trial(found.trial or 0)
    assert study_id is not None
    name = storage.get_study_name_from_id(study_id)
    if route.preferential and not storage.get_study_system_attrs(study_id).get(PREFERENTIAL):
        return render(409, "conflict", f"{name} is not a preferential study; preferences and skips are only for those")
    detail: dict[str, Any] = {"optuna_name": name, "via": "dashboard"}
    if found.trial is not None:
        trial = storage.get_trial(found.trial)
        detail.update(trial_id=found.trial, trial_number=trial.number)
        if route.action in _ONLY_WHILE_RUNNING and trial.state.is_finished():
            return render(409, "conflict", f"trial {trial.number} of {name} has already finished ({trial.state.name})")
    if found.history is not None:
        detail["history_id"] = found.history
    forwarded = b""
    if route.body is not None:
        try:
            checked, extra = CHECKERS[route.body](parse(content_type, body), len(storage.get_study_directions(study_id)))
        except BodyError as exc:
            return render(exc.status, exc.code, exc.detail)
        forwarded = json.dumps(checked).encode()
        detail.update(extra)
    return Forward(path, forwarded, Event(route.action, _short(name), detail))
