"""The review's finding 3 against a real `hpo serve`: whatever state one study is in, listing and
claiming for the team's other studies keep working, and the API says which study is broken and
why. The broken study ranks first (no running trial) while the healthy ones each run one, as in
the review's reproduction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import optuna
import psycopg
import pytest

from tests.conftest import LiveServer

PLUGIN = {"model": "plugin", "entry": "examples.plugin_quadratic:train"}


@pytest.fixture(scope="module")
def server(db_url: str) -> Iterator[LiveServer]:
    s = LiveServer(db_url, HPO_LEASE_SECONDS="120", HPO_HEARTBEAT_SECONDS="5")
    yield s
    s.stop()


def study(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "workload": PLUGIN,
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "sampler": {"kind": "random", "seed": 1},
        "budget": {"n_trials": 20, "max_concurrent": 20},
    }


def sql(db_url: str, query: str, *args: Any) -> None:
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute(query, args)


def remove_optuna_study(db_url: str, optuna_name: str) -> None:
    """What a dashboard DELETE past our guard did (finding 2): Optuna's study gone, our row left."""
    optuna.delete_study(study_name=optuna_name, storage=db_url)


def break_definition(db_url: str, team: str, name: str) -> None:
    """A stored definition that no longer builds a sampler (a seed numpy refuses), as the
    review's `seed: -1` was stored before creation checked seeds."""
    sql(
        db_url,
        "UPDATE hpo_studies SET spec = jsonb_set(spec, '{sampler,seed}', '-1') WHERE name = %s"
        " AND team_id = (SELECT id FROM hpo_teams WHERE name = %s)",
        name,
        team,
    )


@pytest.mark.parametrize("how", ["optuna study removed", "definition no longer valid"])
def test_one_broken_study_leaves_the_teams_other_studies_working(
    server: LiveServer, make_token: Any, team: str, db_url: str, how: str
) -> None:
    with server.client(make_token(team, "member")) as m, server.client(make_token(team, "worker")) as w:
        for name in ("healthy-a", "healthy-b", "victim"):
            m.post("/api/v1/studies", json=study(name)).raise_for_status()
        for name in ("healthy-a", "healthy-b"):
            assert w.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": [name]}).status_code == 200
        if how == "optuna study removed":
            remove_optuna_study(db_url, f"{team}/victim")
        else:
            break_definition(db_url, team, "victim")

        listing = m.get("/api/v1/studies")
        assert listing.status_code == 200, listing.text
        by_name = {s["name"]: s for s in listing.json()["studies"]}
        assert by_name["healthy-a"]["state"] == "running" and by_name["healthy-a"]["counts"]["RUNNING"] == 1

        # Every claim is served by the healthy studies, though the broken one ranks first.
        served = []
        for _ in range(4):
            r = w.post("/api/v1/trials/claim", json={"worker_id": "w"})
            assert r.status_code == 200, r.text
            served.append(r.json()["study"])
        assert set(served) <= {"healthy-a", "healthy-b"}

        # The API names the broken study and why, in the listing and on its own.
        victim = m.get("/api/v1/studies/victim")
        assert victim.status_code == 200, victim.text
        assert victim.json()["broken"] is not None and victim.json()["broken"]["reason"], victim.json()
        listed = {s["name"]: s for s in m.get("/api/v1/studies").json()["studies"]}
        assert listed["victim"]["broken"]["reason"] == victim.json()["broken"]["reason"]
        assert listed["healthy-a"]["broken"] is None

        # And it can be deleted through REST, after which nothing is broken.
        assert m.delete("/api/v1/studies/victim").status_code == 204
        assert all(s["broken"] is None for s in m.get("/api/v1/studies").json()["studies"])


def test_a_broken_study_is_tried_again_and_heals(server: LiveServer, make_token: Any, team: str, db_url: str) -> None:
    """A passing fault is not forever: once the rest is over, a claim tries the study again and,
    when it serves, clears the mark."""
    with server.client(make_token(team, "member")) as m, server.client(make_token(team, "worker")) as w:
        m.post("/api/v1/studies", json=study("flaky")).raise_for_status()
        break_definition(db_url, team, "flaky")
        assert w.post("/api/v1/trials/claim", json={"worker_id": "w"}).status_code == 204
        marked = m.get("/api/v1/studies/flaky").json()["broken"]
        assert marked is not None and marked["since"] is not None
        # Resting: the next claim does not try it (and so does not mark it again).
        assert w.post("/api/v1/trials/claim", json={"worker_id": "w"}).status_code == 204
        assert m.get("/api/v1/studies/flaky").json()["broken"]["since"] == marked["since"]
        # Repaired, and its rest moved into the past.
        sql(
            db_url,
            "UPDATE hpo_studies SET spec = jsonb_set(spec, '{sampler,seed}', '1'), broken_at = broken_at - interval '1 hour'"
            " WHERE name = 'flaky' AND team_id = (SELECT id FROM hpo_teams WHERE name = %s)",
            team,
        )
        r = w.post("/api/v1/trials/claim", json={"worker_id": "w"})
        assert r.status_code == 200 and r.json()["study"] == "flaky", r.text
        assert m.get("/api/v1/studies/flaky").json()["broken"] is None
