"""GET /api/v1/queue on a real server: what a worker could claim now, per study and in all, and
that it moves as claims, finishes and retries happen. An autoscaler reads it with a worker token."""

from __future__ import annotations

from typing import Any

from hpo_client import Client
from tests.conftest import LiveServer

PLUGIN = {"model": "plugin", "entry": "examples.plugin_quadratic:train"}


def study(name: str, n_trials: int, max_concurrent: int, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "workload": PLUGIN,
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "budget": {"n_trials": n_trials, "max_concurrent": max_concurrent, **more},
    }


def depths(w: Any) -> tuple[int, dict[str, int]]:
    r = w.get("/api/v1/queue")
    assert r.status_code == 200, r.text
    body = r.json()
    per_study = {s["name"]: s["depth"] for s in body["studies"]}
    assert body["depth"] == sum(per_study.values())
    assert body["running"] == sum(s["running"] for s in body["studies"])
    assert body["demand"] == body["depth"] + body["running"]
    return body["depth"], per_study


def test_the_queue_counts_what_could_be_claimed_now(live_server: LiveServer, make_token: Any, team: str) -> None:
    with live_server.client(make_token(team, "member")) as m, live_server.client(make_token(team, "worker")) as w:
        assert depths(w) == (0, {})
        m.post("/api/v1/studies", json=study("narrow", 5, 2)).raise_for_status()
        m.post("/api/v1/studies", json=study("wide", 3, 8)).raise_for_status()
        m.post("/api/v1/studies", json=study("retried", 1, 1, max_retries=1)).raise_for_status()
        assert depths(w) == (2 + 3 + 1, {"narrow": 2, "wide": 3, "retried": 1})

        # Headroom: one running of narrow's two.
        w.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": ["narrow"]}).raise_for_status()
        assert depths(w)[1]["narrow"] == 1
        # The one running still needs its slot: demand stays what depth was before the claim.
        assert w.get("/api/v1/queue").json()["demand"] == 2 + 3 + 1
        # The budget: wide's three all running leave nothing to start.
        claimed = [w.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": ["wide"]}).json() for _ in range(3)]
        assert depths(w)[1]["wide"] == 0
        for a in claimed:
            w.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "complete", "value": 1.0}).raise_for_status()
        assert depths(w)[1]["wide"] == 0  # finished, not to be handed out again

        # A waiting retry counts: retried's one trial interrupted, its retry queued.
        a = w.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": ["retried"]}).json()
        assert depths(w)[1]["retried"] == 0
        w.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "failed", "reason": "interrupted"}).raise_for_status()
        queue = w.get("/api/v1/queue").json()
        retried = next(s for s in queue["studies"] if s["name"] == "retried")
        assert (retried["depth"], retried["remaining"], retried["waiting"]) == (1, 0, 1), retried

        # A stopped study hands out nothing, and is not listed.
        m.post("/api/v1/studies/narrow/stop").raise_for_status()
        assert "narrow" not in depths(w)[1]
        # What the queue says is what claims find: the one retry, then nothing.
        assert w.post("/api/v1/trials/claim", json={"worker_id": "w"}).status_code == 200
        assert w.post("/api/v1/trials/claim", json={"worker_id": "w"}).status_code == 204
        assert depths(w)[0] == 0


def test_the_queue_is_for_workers_and_admins_of_the_team(live_server: LiveServer, make_token: Any, team: str) -> None:
    with live_server.client(make_token(team, "member")) as m:
        m.post("/api/v1/studies", json=study("mine", 2, 2)).raise_for_status()
        assert m.get("/api/v1/queue").status_code == 403
    with live_server.client(make_token(team, "viewer")) as v:
        assert v.get("/api/v1/queue").status_code == 403
    with live_server.client(make_token(team)) as a:
        assert depths(a) == (2, {"mine": 2})
    with Client(live_server.url, make_token(team, "worker")) as sdk:
        assert sdk.queue()["depth"] == 2
    with live_server.client(make_token(team + "x", "worker")) as other:
        assert depths(other) == (0, {})
