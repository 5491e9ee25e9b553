"""GET /metrics: Prometheus' exposition format, for the metrics token or the metrics networks.

What is exposed: this process's counters and histograms (service/metrics.py; every uvicorn
process's, added up, when `hpo serve --workers N` runs them in multiprocess mode), and gauges read
from the database at scrape time (service/engine/gauges.py). The gauges name every team and study
of the service, so no team token opens this route: a scrape sends HPO_METRICS_TOKEN as its bearer
token, or comes from one of HPO_METRICS_NETWORKS (the TCP peer, as uvicorn reports it; default
this host only). A token is what works through an ingress, a load balancer or a pod network,
where the peer's address says little about who is asking.

`RequestMetrics` counts every answer by route template (never by raw path, which any client sets),
outside every other layer of the app, so 401s, 429s and the report fast path's answers count too."""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.api.deps import Runtime
from service.engine import gauges
from service.errors import Forbidden, Unauthorized

log = logging.getLogger("hpo.metrics")

PATH = "/metrics"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Paths that reach no FastAPI route get these labels, so the series stay few whatever is asked.
_REPORT = re.compile(r"/api/v1/trials/[0-9]+/report")
_DASHBOARD = "/dashboard"
_UNMATCHED = "(unmatched)"


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    path = scope.get("path", "")
    if path == PATH:
        return PATH
    if _REPORT.fullmatch(path):
        return "/api/v1/trials/{trial_id}/report"  # answered by the report fast path, before routing
    if path == _DASHBOARD or path.startswith(_DASHBOARD + "/"):
        return _DASHBOARD
    return _UNMATCHED


class RequestMetrics:
    """Counts and times every HTTP answer of `app` (the whole service)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before it answers

        async def watching_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            route, code = route_of(scope), str(status)
            metrics.REQUESTS.labels(scope["method"], route, code).inc()
            metrics.REQUEST_SECONDS.labels(scope["method"], route, code).observe(time.perf_counter() - started)
            if status == 503:
                metrics.UNAVAILABLE.labels(route).inc()


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def _from_metrics_network(request: Request, runtime: Runtime) -> bool:
    try:
        peer = ip_address(request.client.host) if request.client else None
    except ValueError:  # not an IP address (an in-process test client, a Unix socket)
        return False
    return peer is not None and any(peer in network for network in runtime.settings.metrics_networks)


def check_access(request: Request, runtime: Runtime) -> None:
    """401 for a bearer token that is not the metrics token; 401 (a token is configured) or 403
    (none is) for a scrape from outside the metrics networks without one."""
    settings = runtime.settings
    expected = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    sent = _bearer(request)
    if sent is not None:
        if expected and hmac.compare_digest(sent.encode(), expected.encode()):
            return
        raise Unauthorized("GET /metrics: that bearer token is not the metrics token (HPO_METRICS_TOKEN); team tokens do not open it")
    if _from_metrics_network(request, runtime):
        return
    networks = ", ".join(str(n) for n in settings.metrics_networks) or "none"
    if expected:
        raise Unauthorized(f"GET /metrics: send the metrics token (HPO_METRICS_TOKEN) as a bearer token; without it, only {networks} may scrape")
    raise Forbidden(f"GET /metrics is open to HPO_METRICS_NETWORKS ({networks}) only; set HPO_METRICS_TOKEN to scrape from elsewhere")


class _ThisProcess(Collector):
    """The default registry's metrics (ours, and the process and GC collectors)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class _DatabaseGauges(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily("hpo_metrics_database_read_ok", "1 if this scrape read the gauges below from the database, else 0.")
        trials = GaugeMetricFamily("hpo_study_trials", "Trials of each study, by Optuna state.", labels=["team", "study", "state"])
        depth = GaugeMetricFamily(
            "hpo_queue_depth",
            "Trials of each study a worker could claim now (as GET /api/v1/queue): budget left plus waiting "
            "retries, capped by max_concurrent headroom. Sum by team for a pool's autoscaling signal.",
            labels=["team", "study"],
        )
        try:
            with self.runtime.transaction() as session:
                found = gauges.read(session, self.runtime.storage)
        except Exception as exc:  # the process's own counters still go out; the gauges say they are missing
            log.warning("metrics: the database gauges could not be read: %s: %s", type(exc).__name__, exc)
            ok.add_metric([], 0)
            yield ok
            return
        for g in found:
            for state, n in g.trials.items():
                trials.add_metric([g.team, g.study, state], n)
            if g.depth is not None:
                depth.add_metric([g.team, g.study], g.depth)
        ok.add_metric([], 1)
        yield from (ok, trials, depth)


def _registry(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROCESS_DIR):
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(_DatabaseGauges(runtime))
    return registry


def scrape(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    check_access(request, runtime)
    return Response(generate_latest(_registry(runtime)), media_type=CONTENT_TYPE_LATEST)


# A plain Starlette route: the answer is Prometheus' text format, not part of the JSON API, and
# its guard is the metrics token, not a team role (tests/test_route_security.py knows it).
route = Route(PATH, scrape, methods=["GET"], name="metrics")


def process_ended(*_: Any) -> None:
    """In multiprocess mode, drop this process's live gauges (connections in use) from the sums."""
    if os.environ.get(MULTIPROCESS_DIR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
