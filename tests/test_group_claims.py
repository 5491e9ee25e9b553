"""Group claims (POST /api/v1/trials/claim-group): up to K trials that fuse, on the real database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pytest

from service.spec.fusion import SHAPE_PARAMS
from tests.conftest import auth, digits_definition


@pytest.fixture
def create(api: Any) -> Iterator[Callable[[str, dict[str, Any]], Any]]:
    """Create a study; it is deleted after the test, so that its claimed trials do not go stale
    under the reaper of a later test's server (tests/test_metrics.py counts the reaper's work)."""
    made: list[tuple[str, str]] = []

    def _create(token: str, definition: dict[str, Any]) -> Any:
        made.append((token, str(definition["name"])))
        return api.post("/api/v1/studies", json=definition, headers=auth(token))

    yield _create
    for token, name in made:
        api.delete(f"/api/v1/studies/{name}", headers=auth(token))


def group(api: Any, token: str, **body: Any) -> Any:
    return api.post("/api/v1/trials/claim-group", json={"worker_id": "w1", **body}, headers=auth(token))


def shape(a: dict[str, Any]) -> dict[str, Any]:
    return {n: a["params"].get(n) for n in SHAPE_PARAMS["mlp"]}


def trial_count(api: Any, token: str, name: str) -> int:
    return len(api.get(f"/api/v1/studies/{name}/trials", headers=auth(token)).json()["trials"])


def test_a_group_shares_its_shape_and_each_member_is_its_own_trial(api: Any, create: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    create(token, digits_definition("grp", budget={"n_trials": 6, "max_concurrent": 6}))
    first = group(api, token, max_trials=4)
    assert first.status_code == 200, first.text
    members = first.json()["assignments"]
    assert len(members) == 4 and first.json()["alone"] is None
    # The shape params (searched: batch_size, optimizer) are the first member's; the scalars vary.
    assert len({str(shape(a)) for a in members}) == 1
    assert len({a["params"]["lr"] for a in members}) == 4
    assert len({a["trial_id"] for a in members}) == 4 and len({a["lease_id"] for a in members}) == 4
    # The budget holds across members: 2 of 6 left, then nothing.
    second = group(api, token, max_trials=4).json()["assignments"]
    assert len(second) == 2
    assert group(api, token, max_trials=4).status_code == 204
    # Each member reports and finishes on its own lease.
    a, b = members[0], members[1]
    ok = api.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 1, "value": 0.5}, headers=auth(token))
    assert ok.status_code == 200
    crossed = api.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": b["lease_id"], "step": 1, "value": 0.5}, headers=auth(token))
    assert crossed.status_code == 409


def test_max_concurrent_caps_a_group(api: Any, create: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    create(token, digits_definition("grp-cap", budget={"n_trials": 10, "max_concurrent": 3}))
    assert len(group(api, token, max_trials=8).json()["assignments"]) == 3


def test_a_refill_fuses_with_the_running_member(api: Any, create: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    create(token, digits_definition("grp-refill", budget={"n_trials": 8, "max_concurrent": 8}))
    # Another study with work: a refill must not take from it.
    create(token, digits_definition("grp-other", budget={"n_trials": 8, "max_concurrent": 8}))
    members = group(api, token, max_trials=2, studies=["grp-refill"]).json()["assignments"]
    pruned, running = members
    api.post(f"/api/v1/trials/{pruned['trial_id']}/finish", json={"lease_id": pruned["lease_id"], "state": "pruned"}, headers=auth(token))
    like = {"trial_id": running["trial_id"], "lease_id": running["lease_id"]}
    refill = group(api, token, max_trials=3, like=like)
    assert refill.status_code == 200, refill.text
    added = refill.json()["assignments"]
    assert len(added) == 3 and {a["study"] for a in added} == {"grp-refill"}
    assert all(shape(a) == shape(running) for a in added)
    # The refill's lease is checked: a finished member's, or a made-up one, is 409.
    gone = group(api, token, max_trials=1, like={"trial_id": pruned["trial_id"], "lease_id": pruned["lease_id"]})
    assert gone.status_code == 409


def test_a_trial_that_cannot_be_fused_comes_alone_with_the_reason(api: Any, create: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    definition = digits_definition("grp-bn", budget={"n_trials": 4, "max_concurrent": 4})
    definition["workload"] = {"model": "mlp", "dataset": "digits", "epochs": 3, "batchnorm": True}
    created = create(token, definition)
    assert created.status_code == 201, created.text
    answer = group(api, token, max_trials=4).json()
    assert len(answer["assignments"]) == 1 and "batchnorm" in answer["alone"]


def test_a_grid_over_shape_params_is_not_pinned(api: Any, create: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    definition = digits_definition("grp-grid", budget={"n_trials": 4, "max_concurrent": 4}, sampler={"kind": "grid"})
    definition["space"] = {
        "lr": {"type": "categorical", "choices": [0.01, 0.1]},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
    }
    create(token, definition)
    answer = group(api, token, max_trials=4).json()
    assert len(answer["assignments"]) == 1 and "grid" in answer["alone"]


def test_a_grid_over_scalars_only_groups(api: Any, create: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    definition = digits_definition("grp-grid-lr", budget={"n_trials": 4, "max_concurrent": 4}, sampler={"kind": "grid"})
    definition["space"] = {"lr": {"type": "categorical", "choices": [0.001, 0.01, 0.1, 0.3]}}
    create(token, definition)
    members = group(api, token, max_trials=4).json()["assignments"]
    assert sorted(a["params"]["lr"] for a in members) == [0.001, 0.01, 0.1, 0.3]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "max_trials"),
        ({"max_trials": 0}, "max_trials"),
        ({"max_trials": 65}, "max_trials"),
        ({"max_trials": "four"}, "max_trials"),
        ({"max_trials": 2, "like": {"trial_id": -1, "lease_id": "x"}}, "trial_id"),
        ({"max_trials": 2, "like": {"trial_id": 1}}, "lease_id"),
        ({"max_trials": 2, "like": {"trial_id": 1, "lease_id": "a\u0000b"}}, "lease_id"),
        ({"max_trials": 2, "worker_id": ""}, "worker_id"),
    ],
)
def test_bad_group_claims_are_422_naming_the_field_and_claim_nothing(api: Any, create: Any, make_token: Any, team: str, db_url: str, body: dict[str, Any], field: str
) -> None:
    token = make_token(team)
    name = f"grp-bad-{team}"
    create(token, digits_definition(name))
    answer = api.post("/api/v1/trials/claim-group", json={"worker_id": "w1", **body}, headers=auth(token))
    assert answer.status_code == 422, answer.text
    assert field in answer.text
    assert trial_count(api, token, name) == 0


def test_a_refill_like_another_teams_trial_is_404_and_claims_nothing(api: Any, create: Any, make_token: Any, team: str, db_url: str) -> None:
    mine, theirs = make_token(team), make_token(team + "-b")
    create(theirs, digits_definition("grp-theirs"))
    create(mine, digits_definition("grp-mine"))
    their = group(api, theirs, max_trials=1).json()["assignments"][0]
    answer = group(api, mine, max_trials=2, like={"trial_id": their["trial_id"], "lease_id": their["lease_id"]})
    assert answer.status_code == 404, answer.text
    assert trial_count(api, mine, "grp-mine") == 0 and trial_count(api, theirs, "grp-theirs") == 1


def test_a_queued_trial_joins_only_a_group_of_its_shape(api: Any, create: Any, make_token: Any, team: str, db_url: str) -> None:
    token = make_token(team)
    definition = digits_definition("grp-queue", budget={"n_trials": 8, "max_concurrent": 8})
    definition["space"] = {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
    }
    create(token, definition)
    study = optuna.load_study(study_name=f"{team}/grp-queue", storage=db_url)
    study.enqueue_trial({"lr": 0.01, "batch_size": 32})
    study.enqueue_trial({"lr": 0.02, "batch_size": 64})
    # The first queued trial leads; the second, of another shape, does not join its group.
    first = group(api, token, max_trials=4).json()["assignments"]
    assert [(a["params"]["lr"], a["params"]["batch_size"]) for a in first] == [(0.01, 32)]
    # It leads the next group, whose other members are sampled in its shape.
    second = group(api, token, max_trials=4).json()["assignments"]
    assert (second[0]["params"]["lr"], second[0]["params"]["batch_size"]) == (0.02, 64)
    assert len(second) == 4 and {a["params"]["batch_size"] for a in second} == {64}
