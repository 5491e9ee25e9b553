"""Presets, fine-tuning, overrides, conditional spaces and space lint, through the API and
checked against the distributions Optuna stored for the sampled trials."""

from __future__ import annotations

import math
from typing import Any

import pytest

from service.spec import StudySpec
from service.spec.lint import lint
from tests.conftest import auth


def create(api: Any, token: str, definition: dict[str, Any]) -> Any:
    response = api.post("/api/v1/studies", json=definition, headers=auth(token))
    assert response.status_code == 201, response.text
    return response.json()


def claim_all(api: Any, token: str, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        r = api.post("/api/v1/trials/claim", json={"worker_id": "w"}, headers=auth(token))
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def stored_distributions(api: Any, token: str, name: str) -> list[dict[str, dict[str, Any]]]:
    trials = api.get(f"/api/v1/studies/{name}/trials", headers=auth(token)).json()["trials"]
    return [{k: d["attributes"] for k, d in t["distributions"].items()} for t in sorted(trials, key=lambda t: t["number"])]


def study(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "workload": {"model": "mlp", "dataset": "digits", "epochs": 2},
        "sampler": {"kind": "random", "seed": 3},
        "budget": {"n_trials": 6, "max_concurrent": 6},
        **fields,
    }


def test_preset_expands_to_the_recommended_ranges(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    created = create(api, token, study("p-adam", preset="adam"))
    assert created["definition"]["workload"]["optimizer"] == "adam"
    assert created["warnings"] == []
    assignments = claim_all(api, token, 6)
    for a, dists in zip(assignments, stored_distributions(api, token, "p-adam")):
        assert dists["lr"] == {"low": 1e-3, "high": 1e-2, "log": True, "step": None}
        assert dists["batch_size"] == {"low": 1, "high": 1024, "log": True, "step": 1}
        assert dists["dropout"] == {"low": 0.2, "high": 0.5, "log": False, "step": None}
        assert dists["weight_decay"]["high"] == 1e-4 and dists["weight_decay"]["log"] is True
        assert 1e-3 <= a["params"]["lr"] <= 1e-2
        assert "optimizer" not in a["params"] and a["workload"]["optimizer"] == "adam"


def test_sgd_momentum_preset_searches_the_usual_momenta(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    create(api, token, study("p-sgdm", preset="sgd_momentum"))
    claim_all(api, token, 2)
    dists = stored_distributions(api, token, "p-sgdm")[0]
    assert dists["momentum"] == {"choices": [0.5, 0.9, 0.99]}
    assert (dists["lr"]["low"], dists["lr"]["high"]) == (1e-3, 1e-2)


def test_finetune_lowers_the_lr_range_by_one_to_two_orders(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    create(api, token, study("p-ft", preset="sgd", finetune=True))
    claim_all(api, token, 1)
    lr = stored_distributions(api, token, "p-ft")[0]["lr"]
    # SGD's usual 1e-2 - 1e-1 moves to 1e-4 - 1e-2.
    assert math.isclose(lr["low"], 1e-4) and math.isclose(lr["high"], 1e-2)


def test_explicit_space_and_fixed_values_override_the_preset(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    created = create(
        api,
        token,
        study(
            "p-over",
            preset="adam",
            space={"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
            workload={"model": "mlp", "dataset": "digits", "epochs": 2, "dropout": 0.3, "optimizer": "adamw"},
        ),
    )
    assert created["definition"]["workload"]["optimizer"] == "adamw"
    claim_all(api, token, 3)
    for dists in stored_distributions(api, token, "p-over"):
        assert (dists["lr"]["low"], dists["lr"]["high"]) == (1e-4, 3e-3)
        assert "dropout" not in dists  # fixed in the workload, so not searched
        assert "batch_size" in dists  # still from the preset


def test_presets_route_lists_every_preset_with_its_expansion(api: Any, make_token: Any, team: str) -> None:
    body = api.get("/api/v1/presets", headers=auth(make_token(team))).json()
    by_name = {p["name"]: p for p in body["presets"]}
    assert set(by_name) == {"adam", "sgd", "sgd_momentum", "rmsprop", "adagrad", "adamw", "adadelta", "adamax", "nadam"}
    assert by_name["adadelta"]["space"]["lr"] == {"type": "float", "low": 1e-2, "high": 1e-1, "log": True}
    assert by_name["sgd"]["fixed"] == {"optimizer": "sgd", "momentum": 0.0}
    assert math.isclose(by_name["adam"]["finetune_space"]["lr"]["low"], 1e-5)
    assert api.get("/api/v1/presets").status_code == 401


def test_unknown_preset_is_a_422_naming_the_allowed_ones(api: Any, make_token: Any, team: str) -> None:
    r = api.post("/api/v1/studies", json=study("p-bad", preset="lamb"), headers=auth(make_token(team)))
    assert r.status_code == 422 and "preset" in r.text and "adamw" in r.text


PER_OPTIMIZER_LR = {
    "type": "conditional",
    "on": "optimizer",
    "cases": {
        "sgd": {"type": "float", "low": 1e-2, "high": 1e-1, "log": True},
        "adam": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
    },
}


def test_conditional_lr_per_optimizer_is_sampled_define_by_run(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    space = {
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
        "lr": PER_OPTIMIZER_LR,
        "momentum": {"type": "conditional", "on": "optimizer", "cases": {"sgd": {"type": "float", "low": 0.5, "high": 0.99}}},
    }
    create(api, token, study("cond", space=space, budget={"n_trials": 12, "max_concurrent": 12}))
    assignments = claim_all(api, token, 12)
    seen = set()
    for a, dists in zip(assignments, stored_distributions(api, token, "cond")):
        optimizer = a["params"]["optimizer"]
        seen.add(optimizer)
        if optimizer == "sgd":
            assert (dists["lr"]["low"], dists["lr"]["high"]) == (1e-2, 1e-1)
            assert 1e-2 <= a["params"]["lr"] <= 1e-1 and "momentum" in a["params"]
        elif optimizer == "adam":
            assert (dists["lr"]["low"], dists["lr"]["high"]) == (1e-4, 1e-3)
            assert 1e-4 <= a["params"]["lr"] <= 1e-3 and "momentum" not in a["params"]
        else:  # no case for rmsprop: lr and momentum are not part of the trial at all
            assert "lr" not in a["params"] and "lr" not in dists and "momentum" not in dists
    assert seen == {"sgd", "adam", "rmsprop"}


def test_conditional_on_a_fixed_value_takes_that_case(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    workload = {"model": "mlp", "dataset": "digits", "epochs": 2, "optimizer": "sgd"}
    create(api, token, study("cond-fixed", workload=workload, space={"lr": PER_OPTIMIZER_LR}))
    claim_all(api, token, 3)
    for dists in stored_distributions(api, token, "cond-fixed"):
        assert (dists["lr"]["low"], dists["lr"]["high"]) == (1e-2, 1e-1)


@pytest.mark.parametrize(
    ("space", "field", "words"),
    [
        ({"lr": {**PER_OPTIMIZER_LR, "on": "momentum_x"}}, "space.lr.on", "neither in the space"),
        (
            {"optimizer": {"type": "categorical", "choices": ["sgd"]}, "lr": PER_OPTIMIZER_LR},
            "space.lr.cases.adam",
            "not a value of 'optimizer'",
        ),
        (
            {
                "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
                "lr": {"type": "conditional", "on": "optimizer", "cases": {"sgd": {"type": "float", "low": 1e-2, "high": 20.0}}},
            },
            "space.lr.cases.sgd.high",
            "(0, 10]",
        ),
        (
            {"optimizer": {"type": "categorical", "choices": ["sgd", "adam"]}, "lr": PER_OPTIMIZER_LR},
            "space.lr",
            "grid sampler",
        ),
    ],
)
def test_bad_conditional_is_a_422_naming_the_field(api: Any, make_token: Any, team: str, space: Any, field: str, words: str) -> None:
    definition = study("cond-bad", space=space)
    if words == "grid sampler":
        definition["sampler"] = {"kind": "grid"}
    r = api.post("/api/v1/studies", json=definition, headers=auth(make_token(team)))
    assert r.status_code == 422, r.text
    assert field in r.text and words in r.text, r.text


def spec(**fields: Any) -> StudySpec:
    return StudySpec.model_validate(study("lint", **fields))


def warned(s: StudySpec, *words: str) -> bool:
    return any(all(w in warning for w in words) for warning in lint(s))


def test_lint_warns_about_linear_lr_and_weight_decay() -> None:
    s = spec(space={"lr": {"type": "float", "low": 1e-4, "high": 1.0}, "weight_decay": {"type": "float", "low": 0.0, "high": 1e-3}})
    assert warned(s, "space.lr", "linear scale") and warned(s, "space.weight_decay", "linear scale")
    assert not lint(spec(space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}))


def test_lint_warns_about_linear_batch_size_over_two_orders() -> None:
    assert warned(spec(space={"batch_size": {"type": "int", "low": 1, "high": 1024}}), "space.batch_size", "two orders")
    assert not warned(spec(space={"batch_size": {"type": "int", "low": 32, "high": 256}}), "batch_size")


def test_lint_warns_about_dropout_above_half() -> None:
    assert warned(spec(space={"dropout": {"type": "float", "low": 0.2, "high": 0.8}}), "space.dropout", "0.5")
    assert warned(spec(workload={"model": "mlp", "dropout": 0.7}), "workload.dropout", "0.5")
    assert not warned(spec(space={"dropout": {"type": "float", "low": 0.2, "high": 0.5}}), "dropout")


def test_lint_warns_when_lr_misses_the_optimizers_usual_range() -> None:
    adam_far = spec(workload={"model": "mlp", "optimizer": "adam"}, space={"lr": {"type": "float", "low": 0.1, "high": 1.0, "log": True}})
    assert warned(adam_far, "space.lr", "adam", "0.001-0.01")
    # Overlapping the usual range at all is fine.
    assert not warned(spec(workload={"model": "mlp", "optimizer": "adam"}, space={"lr": {"type": "float", "low": 5e-3, "high": 1.0, "log": True}}), "usual")
    # Plain SGD (momentum 0) has a higher usual range than SGD with momentum.
    plain_sgd = spec(workload={"model": "mlp", "optimizer": "sgd", "momentum": 0.0}, space={"lr": {"type": "float", "low": 1e-4, "high": 5e-3, "log": True}})
    assert warned(plain_sgd, "sgd", "0.01-0.1")
    # Per case of a conditional lr.
    cond = spec(space={"optimizer": {"type": "categorical", "choices": ["sgd", "adam"]}, "lr": {**PER_OPTIMIZER_LR, "cases": {**PER_OPTIMIZER_LR["cases"], "adam": {"type": "float", "low": 0.5, "high": 1.0, "log": True}}}})
    assert warned(cond, "space.lr.cases.adam", "misses") and not warned(cond, "space.lr.cases.sgd")
    # With finetune, the usual range moves down too.
    assert not warned(spec(finetune=True, workload={"model": "mlp", "optimizer": "adam"}, space={"lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}}), "usual")


def test_lint_explains_dropout_directly_before_batchnorm() -> None:
    bad = spec(workload={"model": "mlp", "batchnorm": True, "block": ["linear", "relu", "dropout", "batchnorm"]})
    assert warned(bad, "workload.block", "variance")
    assert not warned(spec(workload={"model": "mlp", "batchnorm": True}), "variance")
    # Only when BatchNorm can actually be on.
    assert not warned(spec(workload={"model": "mlp", "block": ["linear", "relu", "dropout", "batchnorm"]}), "variance")


def test_create_returns_warnings_but_creates_the_study(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    created = create(api, token, study("warned", space={"lr": {"type": "float", "low": 1e-4, "high": 1.0}}))
    assert any("space.lr" in w and "linear scale" in w for w in created["warnings"])
    assert api.get("/api/v1/studies/warned", headers=auth(token)).status_code == 200


def test_lint_warns_when_nesterov_may_meet_zero_momentum() -> None:
    bad = spec(workload={"model": "mlp", "optimizer": "sgd", "nesterov": True}, space={"momentum": {"type": "float", "low": 0.0, "high": 0.9}})
    assert warned(bad, "nesterov", "momentum")
    fine = spec(workload={"model": "mlp", "optimizer": "sgd", "nesterov": True}, space={"momentum": {"type": "float", "low": 0.5, "high": 0.9}})
    assert not warned(fine, "nesterov")


def test_grid_hands_out_every_point_once_and_finishing_the_last_is_fine(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    space = {"optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop", "adamw"]}}
    create(api, token, study("grid4", space=space, sampler={"kind": "grid", "seed": 5}, budget={"n_trials": 4, "max_concurrent": 1}))
    seen = []
    for _ in range(4):
        (a,) = claim_all(api, token, 1)
        seen.append(a["params"]["optimizer"])
        done = api.post(
            f"/api/v1/trials/{a['trial_id']}/finish",
            json={"lease_id": a["lease_id"], "state": "complete", "value": 1.0},
            headers=auth(token),
        )
        # The last point used up the grid: Optuna's GridSampler would call study.stop() here.
        assert done.status_code == 200, done.text
    assert sorted(seen) == ["adam", "adamw", "rmsprop", "sgd"]
