"""The lr sweep grid, the range test's lr schedule and reading of its curve, the sweep summary,
narrowing, and the study-definition rules for kind lr_sweep / lr_finder / auto_lr_range."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from service.spec import StudySpec
from service.spec.lr_range import LrFinder, LrSweep, narrow, smooth, suggest_range, summarize_sweep
from tests.conftest import auth


def test_sweep_grid_is_log_spaced_with_both_ends() -> None:
    grid = LrSweep(low=1e-5, high=1e-1, points_per_decade=5).grid()
    assert len(grid) == 21 and grid[0] == 1e-5 and grid[-1] == 1e-1
    ratios = {round(b / a, 3) for a, b in zip(grid, grid[1:])}
    assert ratios == {round(10 ** 0.2, 3)}
    assert LrSweep().grid()[0] == 1e-6 and LrSweep().grid()[-1] == 1e-1  # the default 1e-1 .. 1e-6


def test_finder_lr_rises_exponentially_from_low_to_high() -> None:
    f = LrFinder(low=1e-7, high=10, steps=101)
    assert f.lr_at(0) == pytest.approx(1e-7) and f.lr_at(100) == pytest.approx(10)
    assert f.lr_at(50) == pytest.approx(math.sqrt(1e-7 * 10))


def test_a_subnormal_low_is_judged_not_overflowed() -> None:
    """high / low overflows to inf for low = 5e-324 (the fuzzer found it: a 500 from the
    definition's own validation). The sizes are worked out in logs instead."""
    with pytest.raises(ValueError, match="at most 400"):
        LrSweep(low=5e-324, high=100, points_per_decade=20)
    assert len(LrSweep(low=5e-324, high=1e-320, points_per_decade=1).grid()) == 4
    f = LrFinder(low=5e-324, high=10, steps=11)
    lrs = [f.lr_at(i) for i in range(11)]
    assert lrs[0] == 5e-324 and lrs[-1] == pytest.approx(10) and all(math.isfinite(lr) and lr > 0 for lr in lrs)
    # 326 points over 325 decades: each one finite, none past the ends.
    grid = LrSweep(low=5e-324, high=100, points_per_decade=1).grid()
    assert len(grid) == 326 and all(5e-324 <= lr <= 100 for lr in grid)
    # The range test fixes the other parameters at their middles: geometric ones in logs.
    lr = {"type": "float", "low": 1e-5, "high": 1.0, "log": True}
    tiny = {"type": "float", "low": 5e-324, "high": 1e-320, "log": True}
    fixed = spec(auto_lr_range=True, space={"lr": lr, "weight_decay": tiny}).finder_spec().workload.fixed
    assert 5e-324 <= fixed["weight_decay"] <= 1e-320  # not the underflowed product's root, 0


def test_smooth_is_a_bias_corrected_moving_average() -> None:
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no bias towards 0
    out = smooth([1.0, 3.0], 0.5)
    assert out[1] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)


def synthetic_range_test(cliff: float) -> tuple[list[float], list[float]]:
    """A loss flat at low lr, falling fastest around cliff/100, lowest near cliff/3, exploding past cliff."""
    f = LrFinder(steps=100)
    lrs = [f.lr_at(i) for i in range(100)]
    losses = []
    for lr in lrs:
        x = math.log10(lr / cliff)
        loss = 2.3 - 2.0 / (1 + math.exp(-3 * (x + 2))) + (math.exp(4 * (x + 0.5)) if x > -0.5 else 0)
        losses.append(loss)
    return lrs, smooth(losses, 0.6)


def test_suggestion_spans_steepest_descent_to_the_minimum_before_divergence() -> None:
    for cliff in (1e-3, 1e-1, 1.0):
        lrs, losses = synthetic_range_test(cliff)
        s = suggest_range(lrs, losses)
        assert s is not None
        assert s["low"] < s["high"] < cliff, (cliff, s)
        assert cliff / 10 <= s["high"], (cliff, s)  # just before the cliff, not far below it
        assert cliff / 1000 <= s["low"] <= cliff / 10, (cliff, s)
        assert s["divergence_lr"] >= s["high"]


def test_suggestion_needs_a_curve() -> None:
    assert suggest_range([1e-3, 1e-2], [1.0, 0.5]) is None
    assert suggest_range([1e-3, 1e-2, 1e-1], [1.0, float("nan"), float("inf")]) is None


def runs(values: dict[float, Any], initial: float = 2.3) -> list[dict[str, Any]]:
    out = []
    for lr, v in values.items():
        for value in v if isinstance(v, list) else [v]:
            out.append({"lr": lr, "value": None if value == "x" else value, "diverged": value == "x", "initial": initial})
    return out


def test_sweep_summary_finds_the_bottom_of_the_u_and_the_cliff() -> None:
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    result = summarize_sweep(runs({1e-4: 2.0, 1e-3: [0.5, 0.7], 1e-2: 0.62, 1e-1: 2.5, 1.0: "x"}), "minimize", 0.1, grid)
    assert result["best_lr"] == 1e-3 and result["best_value"] == pytest.approx(0.6)
    assert result["range"] == [1e-3, 1e-2]  # 0.62 is within 10% of 0.6; 2.0 is not
    assert result["divergence_lr"] == 1e-1  # worse than the untrained model's 2.3
    assert result["interior"] is True
    assert [p["diverged"] for p in result["points"]] == [0, 0, 0, 0, 1]


def test_sweep_summary_at_an_end_is_not_interior_and_maximize_flips() -> None:
    result = summarize_sweep(runs({1e-3: 0.9, 1e-2: 0.5}), "minimize", 0.1)
    assert result["best_lr"] == 1e-2 and result["interior"] is False and result["divergence_lr"] is None
    result = summarize_sweep(runs({1e-3: 0.9, 1e-2: 0.5}, initial=0.1), "maximize", 0.1)
    assert result["best_lr"] == 1e-3


def test_narrow_is_always_a_sub_range() -> None:
    assert narrow((1e-6, 1.0), {"low": 1e-3, "high": 3e-2}) == (1e-3, 3e-2)
    assert narrow((1e-4, 1e-2), {"low": 1e-5, "high": 3e-3}) == (1e-4, 3e-3)  # clipped below
    lo, hi = narrow((1e-6, 1e-3), {"low": 1e-2, "high": 1e-1})  # missed: the window nearest to it
    assert 1e-6 <= lo < hi <= 1e-3 and hi == 1e-3 and hi / lo == pytest.approx(10, rel=1e-3)
    assert narrow((1e-3, 1.2e-3), {"low": 1.0, "high": 2.0}) == (1e-3, 1.2e-3)


def spec(**fields: Any) -> StudySpec:
    return StudySpec.model_validate({"name": "s", "workload": {"model": "mlp", "dataset": "digits"}, **fields})


def test_sweep_definition_defaults_and_rules() -> None:
    s = spec(kind="lr_sweep")
    assert s.pruner.kind == "none" and s.sampler.kind == "grid"  # pruning off by default for sweeps
    assert s.budget.n_trials == len(LrSweep().grid())
    s = spec(kind="lr_sweep", sweep={"seeds": 3, "points_per_decade": 1, "low": 1e-3, "high": 1e-1})
    assert s.budget.n_trials == 9 and set(s.search_space()) == {"lr", "seed"}
    assert spec(kind="lr_sweep", pruner={"kind": "median"}).pruner.kind == "median"  # asked for explicitly
    assert spec(kind="lr_sweep", preset="sgd_momentum").workload.fixed["optimizer"] == "sgd"
    for bad, where in [
        ({"space": {"dropout": {"type": "float", "low": 0.2, "high": 0.5}}}, "space"),
        ({"sampler": {"kind": "tpe"}}, "sampler.kind"),
        ({"sweep": {"low": 1e-1, "high": 1e-3}}, "low must be < high"),
        ({"workload": {"model": "mlp", "dataset": "digits", "lr": 0.1}}, "workload.lr"),
    ]:
        with pytest.raises(ValidationError, match=where):
            spec(kind="lr_sweep", **bad)


def test_finder_and_auto_lr_range_rules() -> None:
    assert spec(kind="lr_finder").budget.n_trials == 1
    with pytest.raises(ValidationError, match="built-in models"):
        StudySpec.model_validate({"name": "s", "kind": "lr_finder", "workload": {"model": "plugin", "entry": "m:f"}})
    lr = {"type": "float", "low": 1e-5, "high": 1.0, "log": True}
    s = spec(auto_lr_range=True, space={"lr": lr, "dropout": {"type": "float", "low": 0.2, "high": 0.5}})
    f = s.finder_spec()
    assert f.kind == "lr_finder" and f.name == "s-lr-finder" and f.workload.fixed["dropout"] == pytest.approx(0.35)
    assert s.with_lr_range(1e-3, 1e-2).space["lr"].low == 1e-3
    with pytest.raises(ValidationError, match="runs one optimizer"):
        spec(auto_lr_range=True, space={"lr": lr, "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]}})
    with pytest.raises(ValidationError, match="auto_lr_range: needs space.lr"):
        spec(auto_lr_range=True, space={})
    with pytest.raises(ValidationError, match="finder: only"):
        spec(finder={})


def test_bad_sensitivity_definitions_are_422_naming_the_field(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    body = {"name": "bad", "kind": "lr_sweep", "workload": {"model": "mlp", "dataset": "digits"}, "sweep": {"points_per_decade": 0}}
    r = api.post("/api/v1/studies", json=body, headers=auth(token))
    assert r.status_code == 422 and "points_per_decade" in r.text
    r = api.post("/api/v1/studies", json={**body, "kind": "nope"}, headers=auth(token))
    assert r.status_code == 422 and "kind" in r.text
    assert api.get("/api/v1/studies", headers=auth(token)).json()["studies"] == []  # nothing stored


def test_auto_lr_range_study_brings_its_range_test_and_takes_it_along(api: Any, make_token: Any, team: str) -> None:
    token = make_token(team)
    body = {
        "name": "auto",
        "auto_lr_range": True,
        "workload": {"model": "mlp", "dataset": "digits", "optimizer": "adam"},
        "space": {"lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}},
    }
    r = api.post("/api/v1/studies", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    assert r.json()["lr_range"] == {"status": "pending", "finder_study": "auto-lr-finder", "original": [1e-5, 1.0], "narrowed": None}
    finder = api.get("/api/v1/studies/auto-lr-finder", headers=auth(token)).json()
    assert finder["kind"] == "lr_finder" and finder["lr_finder"]["state"] == "pending"
    # A name clash with the range test's name is a 409, and nothing is created.
    clash = api.post("/api/v1/studies", json={**body, "name": "auto-lr"}, headers=auth(token))
    assert clash.status_code == 201
    assert api.post("/api/v1/studies", json={"name": "x-lr-finder"}, headers=auth(token)).status_code == 201
    again = api.post("/api/v1/studies", json={**body, "name": "x"}, headers=auth(token))
    assert again.status_code == 409 and "x-lr-finder" in again.text
    assert "x" not in {s["name"] for s in api.get("/api/v1/studies", headers=auth(token)).json()["studies"]}
    assert api.post("/api/v1/studies/auto/stop", headers=auth(token)).status_code == 200
    assert api.get("/api/v1/studies/auto-lr-finder", headers=auth(token)).json()["state"] == "stopped"
    assert api.delete("/api/v1/studies/auto", headers=auth(token)).status_code == 204
    assert api.get("/api/v1/studies/auto-lr-finder", headers=auth(token)).status_code == 404
