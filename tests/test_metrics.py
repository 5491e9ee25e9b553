"""GET /metrics on real servers: the counters move with a real study worked by two real workers,
the database gauges say what the API says (the queue depth is GET /api/v1/queue's), several
uvicorn processes add up to one set of counters, and only the metrics token (or the metrics
networks) opens it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer, finish_with_workers, start_worker, wait_for

METRICS_TOKEN = "metrics-" + uuid.uuid4().hex
PLUGIN = {"model": "plugin", "entry": "examples.plugin_quadratic:train", "timeout_seconds": 120}


def quadratic(name: str, n_trials: int, max_concurrent: int) -> dict[str, Any]:
    return {
        "name": name,
        "workload": PLUGIN,
        "space": {"x": {"type": "float", "low": -4.0, "high": 4.0}},
        "sampler": {"kind": "random", "seed": 3},
        "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "budget": {"n_trials": n_trials, "max_concurrent": max_concurrent},
    }


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str | None = METRICS_TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 if there are none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def queue_gauges(samples: Samples, team: str) -> dict[str, float]:
    return {dict(ls)["study"]: v for (n, ls), v in samples.items() if n == "hpo_queue_depth" and dict(ls)["team"] == team}


@pytest.fixture(scope="module")
def guarded(db_url: str) -> Iterator[LiveServer]:
    """A server whose /metrics needs the token from everywhere, this host included."""
    server = LiveServer(db_url, HPO_METRICS_TOKEN=METRICS_TOKEN, HPO_METRICS_NETWORKS="[]", HPO_HEARTBEAT_SECONDS="1")
    yield server
    server.stop()


def test_the_counters_move_with_a_real_study_and_the_queue_gauge_is_the_queue(guarded: LiveServer, make_token: Any, team: str) -> None:
    member, worker = make_token(team, "member"), make_token(team, "worker")
    with guarded.client(member) as m, guarded.client(worker) as w:
        m.post("/api/v1/studies", json=quadratic("tuned", 12, 2)).raise_for_status()
        m.post("/api/v1/studies", json=quadratic("halted", 3, 3)).raise_for_status()
        m.post("/api/v1/studies/halted/stop").raise_for_status()

        before = scrape(guarded.url)
        assert value(before, "hpo_metrics_database_read_ok") == 1
        # The same figures as the queue endpoint: 2 (max_concurrent) of tuned's 12; a stopped
        # study hands out nothing and has no queue series, as it has no queue entry.
        assert queue_gauges(before, team) == {s["name"]: s["depth"] for s in w.get("/api/v1/queue").json()["studies"]} == {"tuned": 2}
        assert value(before, "hpo_study_trials", team=team, study="halted", state="RUNNING") == 0
        # One claim that finds nothing: a study of another name only.
        assert w.post("/api/v1/trials/claim", json={"worker_id": "probe", "studies": ["halted"]}).status_code == 204

        workers = [
            start_worker(guarded.url, worker, "--worker-id", f"metrics-{i}", "--allow-plugin", "examples.*", "--exit-when-idle", "2")
            for i in range(2)
        ]
        finish_with_workers(m, workers, ["tuned"], 240)
        trials = m.get("/api/v1/studies/tuned/trials").json()["trials"]
        after = scrape(guarded.url)
        queue = w.get("/api/v1/queue").json()

    states = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    assert states["COMPLETE"] + states["PRUNED"] == 12 and states["PRUNED"] >= 1, states

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Each worker's last claim finds nothing; each trial was claimed once.
    assert moved("hpo_claims_total", outcome="assigned") == 12
    assert moved("hpo_claims_total", outcome="no_work") >= 1 + 2
    assert moved("hpo_finishes_total", state="complete") == states["COMPLETE"]
    assert moved("hpo_finishes_total", state="pruned") == states["PRUNED"]
    # Every intermediate value stored is a report counted; every pruned trial heard it once.
    assert moved("hpo_reports_total") == sum(len(t["intermediate_values"]) for t in trials)
    assert moved("hpo_prunes_total") == states["PRUNED"]
    assert moved("hpo_report_batch_size_sum") == moved("hpo_reports_total")
    # Requests by route template, never by raw path; the worker protocol's own routes among them.
    report_route = "/api/v1/trials/{trial_id}/report"
    assert moved("hpo_http_requests_total", route=report_route, status="200") == moved("hpo_reports_total")
    assert moved("hpo_http_requests_total", route="/api/v1/trials/claim", method="POST", status="204") >= 3
    assert moved("hpo_http_request_duration_seconds_count", route="/api/v1/trials/{trial_id}/finish") == 12
    routes = {dict(ls)["route"] for (n, ls), _ in after.items() if n == "hpo_http_requests_total"}
    assert report_route in routes and not [r for r in routes if re.search(r"/[0-9]", r)], routes
    # The database gauges: trials by state as the API lists them; an empty queue after the study.
    for state, n in states.items():
        assert value(after, "hpo_study_trials", team=team, study="tuned", state=state) == n
    assert queue_gauges(after, team) == {s["name"]: s["depth"] for s in queue["studies"]} == {"tuned": 0}
    assert value(after, "hpo_db_pool_connections_max") > 0
    assert 0 <= value(after, "hpo_db_pool_connections_in_use") <= value(after, "hpo_db_pool_connections_max")


def test_a_lost_trial_is_counted_failed_and_retried_by_the_reaper(db_url: str, make_token: Any, team: str) -> None:
    server = LiveServer(db_url, HPO_METRICS_TOKEN=METRICS_TOKEN, HPO_LEASE_SECONDS="2", HPO_HEARTBEAT_SECONDS="1", HPO_REAPER_SECONDS="0.5")
    try:
        with server.client(make_token(team, "member")) as m, server.client(make_token(team, "worker")) as w:
            definition = quadratic("lost", 1, 1)
            definition["budget"]["max_retries"] = 1
            m.post("/api/v1/studies", json=definition).raise_for_status()
            w.post("/api/v1/trials/claim", json={"worker_id": "silent"}).raise_for_status()  # and never heard from again

            def counted() -> bool:
                s = scrape(server.url)
                return value(s, "hpo_reaper_actions_total", action="failed") >= 1 and value(s, "hpo_reaper_actions_total", action="retried") >= 1

            wait_for(counted, 60, "the reaper's failure and retry of the lost trial were not counted")
            samples = scrape(server.url)
            assert value(samples, "hpo_reaper_actions_total", action="failed") == 1
            assert value(samples, "hpo_reaper_actions_total", action="retried") == 1
            assert value(samples, "hpo_study_trials", team=team, study="lost", state="WAITING") == 1
            assert queue_gauges(samples, team) == {"lost": 1} == {s["name"]: s["depth"] for s in w.get("/api/v1/queue").json()["studies"]}
    finally:
        server.stop()


def test_metrics_refuse_callers_without_the_metrics_token(guarded: LiveServer, make_token: Any, team: str) -> None:
    url = guarded.url + "/metrics"
    # From this very host: HPO_METRICS_NETWORKS is empty, so only the token opens it.
    nothing = httpx.get(url)
    assert nothing.status_code == 401 and "HPO_METRICS_TOKEN" in nothing.json()["detail"], nothing.text
    for token in ("wrong", METRICS_TOKEN + "x", make_token(team), make_token(team, "worker")):
        refused = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401, (token, refused.text)
        assert "hpo_" not in refused.text and "# HELP" not in refused.text
    assert httpx.get(url, headers={"Authorization": f"Basic {METRICS_TOKEN}"}).status_code == 401
    assert scrape(guarded.url)  # and the token does


def test_the_metrics_networks_open_it_without_a_token(live_server: LiveServer) -> None:
    """The session's server keeps the default: no token configured, this host may scrape."""
    samples = scrape(live_server.url, token=None)
    assert value(samples, "hpo_metrics_database_read_ok") == 1
    # A bearer token that is not the metrics token is refused even from an allowed network.
    assert httpx.get(live_server.url + "/metrics", headers={"Authorization": "Bearer guess"}).status_code == 401


def test_outside_the_metrics_networks_without_a_token_is_403(settings: Any) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    closed = settings.model_copy(update={"metrics_networks": []})
    with TestClient(create_app(closed), raise_server_exceptions=False) as client:
        r = client.get("/metrics")
    assert r.status_code == 403, r.text
    assert "HPO_METRICS_NETWORKS" in r.json()["detail"] and "HPO_METRICS_TOKEN" in r.json()["detail"]


def test_several_uvicorn_processes_add_up_to_one_set_of_counters(db_url: str, make_token: Any, team: str) -> None:
    """`hpo serve --workers 2`: each request, and each scrape, reaches either process; the counts
    are the same whichever answers (prometheus-client's multiprocess mode)."""
    server = LiveServer(db_url, HPO_API_WORKERS="2", HPO_METRICS_TOKEN=METRICS_TOKEN)
    try:
        with server.client(make_token(team, "worker")) as w:
            start = value(scrape(server.url), "hpo_claims_total", outcome="no_work")
            for _ in range(40):  # new connections, so both processes get some
                assert httpx.post(server.url + "/api/v1/trials/claim", json={"worker_id": "w"}, headers=w.headers).status_code == 204
            seen = {value(scrape(server.url), "hpo_claims_total", outcome="no_work") - start for _ in range(10)}
        assert seen == {40}, seen
        pids = {dict(ls).get("pid") for (n, ls), _ in scrape(server.url).items() if n == "hpo_db_pool_connections_max"}
        assert pids == {None}  # a live sum over the processes, not one series a process
    finally:
        server.stop()


def test_every_metric_the_alert_rules_use_is_exposed(live_server: LiveServer, make_token: Any, team: str) -> None:
    """deploy/prometheus/hpo-alerts.yaml (docs/deploy.md) names only metrics a real server has."""
    import yaml

    rules = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "hpo-alerts.yaml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 4 and all(rule["alert"].startswith("Hpo") for group in rules["groups"] for rule in group["rules"])
    with live_server.client(make_token(team, "member")) as m, live_server.client(make_token(team, "worker")) as w:
        m.post("/api/v1/studies", json=quadratic("watched", 1, 1)).raise_for_status()
        w.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": ["nothing-here"]})
        m.get("/api/v1/nope")  # a 404, so that a status other than 2xx has been counted
    exposed = {name for name, _ in scrape(live_server.url, token=None)}
    used = {name for expr in exprs for name in re.findall(r"\bhpo_[a-z_]+", expr)}
    assert used and used <= exposed, used - exposed
