"""The service's Prometheus instruments: what this process did (requests, claims, reports,
finishes, the reaper, database connections in use). GET /metrics (service/api/metrics.py) exposes
them, with the gauges that describe the database (trials by state, queue depth) read at scrape time.

Counters count in this process. With several uvicorn processes (`hpo serve --workers N`) a
scrape reaches one of them, so `hpo serve` then points PROMETHEUS_MULTIPROC_DIR at a directory
of its own before the processes start, and prometheus-client keeps every process's values in
files there, which a scrape of any process adds up. API replicas (pods, hosts) each expose their
own, and Prometheus adds them up (`sum by (...)`).

Nothing here imports the API or the engine, so every layer can count what it does."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Engine, event

REQUESTS = Counter(
    "hpo_http_requests", "HTTP requests answered, by method, route template and status.", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "hpo_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
UNAVAILABLE = Counter(
    "hpo_http_unavailable", "503 answers (database unavailable, plots busy, a conflicting request), by route template.", ["route"]
)

CLAIMS = Counter("hpo_claims", "Claim calls answered, by outcome: assigned (a trial) or no_work (204).", ["outcome"])
REPORTS = Counter("hpo_reports", "Intermediate values recorded (reports and checkpoint uploads).")
PRUNES = Counter("hpo_prunes", "Reports answered with prune=true (the worker stops the trial).")
REPORT_BATCH_SIZE = Histogram(
    "hpo_report_batch_size", "Reports committed together in one transaction.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
FINISHES = Counter("hpo_finishes", "Trials ended by their worker, by the state they were stored in.", ["state"])
REAPER_ACTIONS = Counter(
    "hpo_reaper_actions",
    "Lost trials failed by the reaper (no heartbeat for a lease, or a claim that never committed), and retries queued "
    "(a WAITING copy of a lost or interrupted trial, up to budget.max_retries).",
    ["action"],
)

# Every label value exists from the start, at 0: a series that appears only with its first event
# makes `rate()` and `increase()` miss that event (an alert on the first lost trial never fires).
for _outcome in ("assigned", "no_work"):
    CLAIMS.labels(outcome=_outcome)
for _state in ("complete", "pruned", "failed"):
    FINISHES.labels(state=_state)
for _action in ("failed", "retried"):
    REAPER_ACTIONS.labels(action=_action)

# Gauges of this process, summed over the live processes in multiprocess mode.
POOL_IN_USE = Gauge(
    "hpo_db_pool_connections_in_use", "Database connections checked out of this service's pools.", multiprocess_mode="livesum"
)
POOL_CAPACITY = Gauge(
    "hpo_db_pool_connections_max", "The most connections the pools may hold (pool_size + max_overflow each).", multiprocess_mode="livesum"
)


def watch_pool(engine: Engine, capacity: int) -> None:
    """Count the engine's connections in use. The listeners are on the engine, so they carry over
    to the new pool that `engine.dispose()` makes."""

    def checked_out(*_: Any) -> None:
        POOL_IN_USE.inc()

    def checked_in(*_: Any) -> None:
        POOL_IN_USE.dec()

    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)
    POOL_CAPACITY.inc(capacity)


def finished(state: str) -> None:
    FINISHES.labels(state=state).inc()


def reported(prunes: int, reports: int = 1) -> None:
    REPORTS.inc(reports)
    if prunes:
        PRUNES.inc(prunes)
