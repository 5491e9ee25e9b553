"""Every sampler and pruner kind of the definition, through the API: the options arrive in the
Optuna objects a claim and a report build, the pruners the service leaves to Optuna decide as
Optuna does on the same curves, and brute force hands out each combination once."""

from __future__ import annotations

import uuid
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from service.engine import factories
from service.engine.storage import make_storage
from service.settings import Settings
from service.spec import StudySpec
from tests.conftest import auth, digits_definition
from tests.curve_schedule import run_schedule
from tests.test_api_studies import stored_state


@pytest.fixture(scope="module")
def storage(db_url: str, settings: Settings) -> optuna.storages.BaseStorage:
    return make_storage(db_url, settings)


def created(api: Any, token: str, **overrides: Any) -> tuple[str, StudySpec]:
    """A study made through the API, and its definition as the API stored it."""
    name = f"k-{uuid.uuid4().hex[:8]}"
    response = api.post("/api/v1/studies", json=digits_definition(name, **overrides), headers=auth(token))
    assert response.status_code == 201, response.text
    stored = api.get(f"/api/v1/studies/{name}", headers=auth(token)).json()["definition"]
    return name, StudySpec.model_validate(stored)


def claimed(api: Any, token: str, name: str) -> dict[str, Any]:
    response = api.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": [name]}, headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()


SAMPLERS = [
    ({"kind": "tpe"}, optuna.samplers.TPESampler, {"_n_startup_trials": 10, "_multivariate": None, "_group": False, "_constant_liar": True}),
    (
        {"kind": "tpe", "multivariate": True, "group": True, "constant_liar": False, "n_startup_trials": 3, "n_ei_candidates": 7},
        optuna.samplers.TPESampler,
        {"_n_startup_trials": 3, "_n_ei_candidates": 7, "_multivariate": True, "_group": True, "_constant_liar": False},
    ),
    ({"kind": "gp", "n_startup_trials": 4, "deterministic_objective": True}, optuna.samplers.GPSampler, {"_n_startup_trials": 4, "_deterministic": True}),
    ({"kind": "nsga2", "population_size": 6}, optuna.samplers.NSGAIISampler, {"_population_size": 6}),
    ({"kind": "nsga3", "population_size": 8}, optuna.samplers.NSGAIIISampler, {"_population_size": 8}),
    ({"kind": "cmaes"}, optuna.samplers.CmaEsSampler, {}),
    ({"kind": "qmc"}, optuna.samplers.QMCSampler, {}),
]


@pytest.mark.parametrize(("sampler", "cls", "attrs"), SAMPLERS, ids=[f"{s['kind']}-{i}" for i, (s, _, _) in enumerate(SAMPLERS)])
def test_sampler_options_reach_the_sampler_a_claim_builds(
    api: Any, make_token: Any, team: str, storage: Any, sampler: dict[str, Any], cls: type, attrs: dict[str, Any]
) -> None:
    token = make_token(team)
    name, spec = created(api, token, sampler={**sampler, "seed": 3})
    study = factories.load_study(storage, f"{team}/{name}", spec, n_claimed=2)
    assert type(study.sampler) is cls
    for attr, value in attrs.items():
        assert getattr(study.sampler, attr) == value, attr
    # The claim path builds it and samples with it: params inside the space.
    params = claimed(api, token, name)["params"]
    assert 1e-5 <= params["lr"] <= 1.0 and params["optimizer"] in ("sgd", "adam")


def test_genetic_options_reach_the_child_generation(api: Any, make_token: Any, team: str, storage: Any) -> None:
    token = make_token(team)
    sampler = {"kind": "nsga2", "population_size": 4, "mutation_prob": 0.25, "crossover": "sbx", "crossover_prob": 0.7, "swapping_prob": 0.3}
    name, spec = created(api, token, sampler=sampler)
    children = factories.load_study(storage, f"{team}/{name}", spec).sampler._child_generation_strategy  # type: ignore[attr-defined]
    assert (children._mutation_prob, children._crossover_prob, children._swapping_prob) == (0.25, 0.7, 0.3)
    assert type(children._crossover) is optuna.samplers.nsgaii.SBXCrossover


PRUNERS = [
    (
        {"kind": "successive_halving", "min_resource": 2, "reduction_factor": 3, "min_early_stopping_rate": 1, "bootstrap_count": 2},
        optuna.pruners.SuccessiveHalvingPruner,
        {"_min_resource": 2, "_reduction_factor": 3, "_min_early_stopping_rate": 1, "_bootstrap_count": 2},
    ),
    ({"kind": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner, {"_min_resource": None, "_reduction_factor": 4}),
    (
        {"kind": "hyperband", "min_resource": 1, "max_resource": 9, "reduction_factor": 3},
        optuna.pruners.HyperbandPruner,
        {"_min_resource": 1, "_max_resource": 9, "_reduction_factor": 3},
    ),
    ({"kind": "threshold", "upper": 2.5, "n_warmup_steps": 1}, optuna.pruners.ThresholdPruner, {"_upper": 2.5, "_lower": float("-inf"), "_n_warmup_steps": 1}),
    ({"kind": "patience", "patience": 3, "min_delta": 0.01}, optuna.pruners.PatientPruner, {"_patience": 3, "_min_delta": 0.01, "_wrapped_pruner": None}),
]


@pytest.mark.parametrize(("pruner", "cls", "attrs"), PRUNERS, ids=[f"{p['kind']}-{i}" for i, (p, _, _) in enumerate(PRUNERS)])
def test_pruner_options_reach_the_pruner_a_report_builds(
    api: Any, make_token: Any, team: str, storage: Any, pruner: dict[str, Any], cls: type, attrs: dict[str, Any]
) -> None:
    token = make_token(team)
    name, spec = created(api, token, pruner=pruner)
    built = factories.load_study(storage, f"{team}/{name}", spec).pruner
    assert type(built) is cls
    for attr, value in attrs.items():
        assert getattr(built, attr) == value, attr


def test_a_patience_pruner_wraps_the_pruner_it_names(api: Any, make_token: Any, team: str, storage: Any) -> None:
    token = make_token(team)
    wrapped = {"kind": "percentile", "percentile": 25.0, "n_startup_trials": 2}
    name, spec = created(api, token, pruner={"kind": "patience", "patience": 1, "wrapped": wrapped})
    inner = factories.load_study(storage, f"{team}/{name}", spec).pruner._wrapped_pruner  # type: ignore[attr-defined]
    assert type(inner) is optuna.pruners.PercentilePruner
    assert (inner._percentile, inner._n_startup_trials) == (25.0, 2)


def test_gp_without_torch_in_the_api_is_422_and_stores_nothing(
    api: Any, make_token: Any, team: str, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = make_token(team)
    real = factories.importlib.util.find_spec
    monkeypatch.setattr(factories.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    before = stored_state(db_url)
    response = api.post("/api/v1/studies", json=digits_definition("gp-no-torch", sampler={"kind": "gp"}), headers=auth(token))
    assert response.status_code == 422, response.text
    assert "sampler.kind" in response.json()["detail"] and "torch" in response.json()["detail"]
    assert stored_state(db_url) == before


def test_brute_force_hands_out_every_combination_once_then_ends(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    space = {
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
        # Only under sgd: 2 x (2 + 1) = 6 combinations.
        "momentum": {"type": "conditional", "on": "optimizer", "cases": {"sgd": {"type": "categorical", "choices": [0.8, 0.9]}}},
    }
    name, spec = created(api, token, space=space, sampler={"kind": "bruteforce", "seed": 0}, budget={"n_trials": 20, "max_concurrent": 20})
    assert spec.budget.n_trials == 6  # the space's size, not the 20 asked for
    seen = [tuple(sorted(claimed(api, token, name)["params"].items())) for _ in range(6)]
    assert len(set(seen)) == 6, seen
    response = api.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": [name]}, headers=auth(token))
    assert response.status_code == 204


TRIALS = 20
STATES = {"pruned": TrialState.PRUNED, "failed": TrialState.FAIL, "complete": TrialState.COMPLETE}


def curves_through_the_service(api: Any, token: str, team: str, pruner: dict[str, Any], seed: int) -> tuple[list[bool], list[bool]]:
    """One random schedule of trials (curve_schedule) through the worker protocol and through
    plain Optuna with the same pruner."""
    name, spec = created(api, token, pruner=pruner, budget={"n_trials": TRIALS, "max_concurrent": 4})
    raw = optuna.create_study(study_name=f"{team}/{name}", pruner=factories.build_pruner(spec), sampler=optuna.samplers.RandomSampler(seed))
    theirs: list[bool] = []
    ours: list[bool] = []

    def start() -> tuple[optuna.Trial, dict[str, Any]]:
        assignment = claimed(api, token, name)
        r = raw.ask()
        assert r.number == assignment["number"]
        return r, assignment

    def report(pair: tuple[optuna.Trial, dict[str, Any]], step: int, value: float) -> bool:
        r, a = pair
        r.report(value, step)
        theirs.append(r.should_prune())
        body = {"lease_id": a["lease_id"], "step": step, "value": value}
        response = api.post(f"/api/v1/trials/{a['trial_id']}/report", json=body, headers=auth(token))
        assert response.status_code == 200, response.text
        ours.append(response.json()["prune"])
        return bool(ours[-1])

    def end(pair: tuple[optuna.Trial, dict[str, Any]], state: str, value: float) -> None:
        r, a = pair
        result = value if state == "complete" else None
        body = {"lease_id": a["lease_id"], "state": state, "value": result}
        assert api.post(f"/api/v1/trials/{a['trial_id']}/finish", json=body, headers=auth(token)).status_code == 200
        raw.tell(r, result, state=STATES[state])

    run_schedule(seed, TRIALS, start, report, end, max_steps=9)
    return theirs, ours


REPLAYED = [
    {"kind": "successive_halving", "min_resource": 1, "reduction_factor": 2},
    {"kind": "successive_halving", "min_resource": 2, "reduction_factor": 3, "bootstrap_count": 2},
    {"kind": "hyperband", "min_resource": 1, "max_resource": 9, "reduction_factor": 2},
    {"kind": "hyperband"},
    {"kind": "successive_halving"},
    {"kind": "threshold", "upper": 0.6, "n_warmup_steps": 1},
    {"kind": "patience", "patience": 1, "min_delta": 0.02},
    {"kind": "patience", "patience": 0, "wrapped": {"kind": "median", "n_startup_trials": 3, "n_warmup_steps": 1}},
]


@pytest.mark.parametrize("pruner", REPLAYED, ids=[f"{p['kind']}-{i}" for i, p in enumerate(REPLAYED)])
def test_pruning_decisions_match_optuna_on_replayed_curves(api: Any, make_token: Any, team: str, pruner: dict[str, Any]) -> None:
    theirs, ours = curves_through_the_service(api, make_token(team), team, pruner, seed=len(str(pruner)))
    assert len(theirs) > 30
    assert 0 < sum(theirs) < len(theirs)  # both answers occur: the comparison means something
    assert ours == theirs
