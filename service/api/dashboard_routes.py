"""The routes of optuna-dashboard that /dashboard lets through: an allow-list, not a deny-list.

A request reaches optuna-dashboard only if its method and its *canonical* path match one of
ROUTES below, and it is then forwarded with that canonical path, so the dashboard routes exactly
what we checked. Canonical means: no control character anywhere (Bottle's route regexes end in
`$`, which also matches before a final newline), runs of `/` collapsed, trailing `/` stripped
(optuna-dashboard's before_request hook strips them, so `/api/studies/4/` *is* `/api/studies/4`
to it). Ids are plain ASCII digits without sign or leading zero: Bottle's `int` filter takes
`-1` and Python's int() takes `٢`, and neither names anything of ours.

Each route keeps optuna-dashboard's own rule (`rule`), so tests/test_route_security.py can check
that every route of the installed optuna-dashboard is either here or in NOT_SERVED: a new
version's new route is refused until someone classifies it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Study and trial ids (PostgreSQL int4: a larger one names nothing, and must not reach a query).
MAX_ID = 2**31 - 1
_ID = r"(?:0|[1-9][0-9]{0,9})"
# What each of optuna-dashboard's path parameters may be here.
_PARAMS = {
    "<study_id:int>": rf"(?P<study>{_ID})",
    "<trial_id:int>": rf"(?P<trial>{_ID})",
    "<plot_type>": r"(?P<plot>[a-z_]{1,32})",
    # Preference history ids are uuid4 hex (optuna_dashboard.preferential).
    "<history_id>": r"(?P<history>[0-9A-Za-z_-]{1,64})",
    # One file name of optuna-dashboard's public/ folder (bundle.js, ...); Bottle's static_file
    # guards its root as well.
    "<filename:path>": r"(?P<file>[A-Za-z0-9][A-Za-z0-9._-]{0,127})",
}

# The kinds of route, for what service/api/dashboard_guard.py does with them.
READ = "read"  # forwarded as it is
WRITE = "write"  # member or admin; the body is checked, and the change is audited
CREATE = "create"  # 409: studies are created through the REST API
RENAME = "rename"  # 409: a renamed study would lose its REST record
DELETE = "delete"  # answered by our own delete (service/api/dashboard_guard.py)
PLOT = "plot"  # optuna-dashboard's server-side plotly plots


@dataclass(frozen=True)
class Route:
    method: str
    rule: str  # optuna-dashboard's own rule, as Bottle has it
    kind: str
    action: str | None = None  # the audit action of a write (service/db/audit.py)
    body: str | None = None  # the JSON body's checker (service/api/dashboard_bodies.py)
    preferential: bool = False  # only for optuna-dashboard's preferential studies
    pattern: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = re.split(r"(<[^>]+>)", self.rule)
        pattern = "".join(_PARAMS[p] if p.startswith("<") else re.escape(p) for p in parts)
        object.__setattr__(self, "pattern", re.compile(pattern))


ROUTES = (
    Route("GET", "/api/meta", READ),
    Route("GET", "/api/studies", READ),
    Route("POST", "/api/studies", CREATE),
    Route("GET", "/api/studies/<study_id:int>", READ),
    Route("DELETE", "/api/studies/<study_id:int>", DELETE),
    Route("POST", "/api/studies/<study_id:int>/rename", RENAME),
    Route("GET", "/api/studies/<study_id:int>/param_importances", READ),
    Route("GET", "/api/studies/<study_id:int>/plot/<plot_type>", PLOT),
    Route("PUT", "/api/studies/<study_id:int>/note", WRITE, "dashboard.study_note", "note"),
    Route("PUT", "/api/studies/<study_id:int>/<trial_id:int>/note", WRITE, "dashboard.trial_note", "note"),
    Route("POST", "/api/trials/<trial_id:int>/tell", WRITE, "dashboard.tell", "tell"),
    Route("POST", "/api/trials/<trial_id:int>/user-attrs", WRITE, "dashboard.user_attrs", "user_attrs"),
    Route("POST", "/api/studies/<study_id:int>/preference", WRITE, "dashboard.preference", "preference", preferential=True),
    Route(
        "PUT",
        "/api/studies/<study_id:int>/preference_feedback_component",
        WRITE,
        "dashboard.feedback_component",
        "feedback_component",
        preferential=True,
    ),
    Route("DELETE", "/api/studies/<study_id:int>/preference/<history_id>", WRITE, "dashboard.preference_remove", preferential=True),
    Route("POST", "/api/studies/<study_id:int>/preference/<history_id>", WRITE, "dashboard.preference_restore", preferential=True),
    Route("POST", "/api/studies/<study_id:int>/<trial_id:int>/skip", WRITE, "dashboard.skip", preferential=True),
    Route("GET", "/csv/<study_id:int>", READ),
    Route("GET", "/favicon.ico", READ),
    Route("GET", "/static/<filename:path>", READ),
)

# optuna-dashboard's routes that are not let through, and why (all answer 404 here).
NOT_SERVED = {
    # Its page and client-side routes: served by us (service/api/dashboard.py), with our CSP.
    ("GET", "/"): "the page is ours",
    ("GET", "/dashboard<:re:(/.*)?>"): "the page is ours",
    # Schema upgrades are `hpo migrate`'s job, never a dashboard user's. (A GET of that path,
    # like every page path, gets our page.)
    ("GET", "/incompatible-rdb-schema"): "the page is ours",
    ("POST", "/incompatible-rdb-schema"): "schema upgrades are hpo migrate's",
    # No artifact store and no LLM provider is configured for the dashboard.
    ("GET", "/artifacts/<study_id:int>/<artifact_id:re:[0-9a-fA-F-]+>"): "no artifact store",
    ("GET", "/artifacts/<study_id:int>/<trial_id:int>/<artifact_id:re:[0-9a-fA-F-]+>"): "no artifact store",
    ("POST", "/api/artifacts/<study_id:int>/<trial_id:int>"): "no artifact store",
    ("POST", "/api/artifacts/<study_id:int>"): "no artifact store",
    ("DELETE", "/api/artifacts/<study_id:int>/<trial_id:int>/<artifact_id:re:[0-9a-fA-F-]+>"): "no artifact store",
    ("DELETE", "/api/artifacts/<study_id:int>/<artifact_id:re:[0-9a-fA-F-]+>"): "no artifact store",
    ("POST", "/api/llm/trial_filter_query"): "no LLM provider",
    ("POST", "/api/llm/generate_plotly_graph_query"): "no LLM provider",
    ("POST", "/api/llm/re_generate_plotly_graph_query"): "no LLM provider",
}

# The plots optuna-dashboard draws with plotly on the server.
PLOT_TYPES = ("contour", "slice", "parallel_coordinate", "rank", "edf", "timeline", "pareto_front")


@dataclass(frozen=True)
class Match:
    route: Route
    study: int | None = None
    trial: int | None = None
    plot: str | None = None
    history: str | None = None


def canonical(path: str) -> str:
    """The path as optuna-dashboard routes it: runs of `/` collapsed, trailing `/` stripped. (A
    path with a control character never gets here: service/api/request_guard.py answers 404.)"""
    return re.sub(r"/{2,}", "/", path).rstrip("/") or "/"


def match(method: str, path: str) -> Match | None:
    """The allowed route for a canonical path, or None. HEAD is allowed wherever GET is."""
    method = "GET" if method == "HEAD" else method
    for route in ROUTES:
        if route.method == method and (m := route.pattern.fullmatch(path)) is not None:
            found = m.groupdict()
            ids = {k: int(found[k]) for k in ("study", "trial") if found.get(k) is not None}
            if any(v > MAX_ID for v in ids.values()):
                return None
            return Match(route, ids.get("study"), ids.get("trial"), found.get("plot"), found.get("history"))
    return None
