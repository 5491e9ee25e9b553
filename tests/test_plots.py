"""Plots (PNG) and the HTML report, against a real `hpo serve`: a study driven to its end by
doing the worker protocol over HTTP here (no torch), with U-shaped losses in lr; then unit tests
of the lr-sweep and range-test variants of the lr plot from constructed trials."""

from __future__ import annotations

import io
import math
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState, create_trial
from PIL import Image

from service.engine import plots
from service.spec import StudySpec
from service.spec.lr_range import LrFinder, smooth
from tests.conftest import LiveServer, digits_definition

KINDS = ("history", "curves", "lr", "importance", "parallel")


def assert_png(data: bytes) -> Image.Image:
    """A PNG of the fixed size with something drawn on it (not one flat colour)."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.size == (plots.WIDTH, plots.HEIGHT) == (800, 500)
    assert np.asarray(image.convert("L"), dtype=float).var() > 100
    return image


def loss(lr: float, epoch: int, extra: float = 0.0) -> float:
    """A U in log10(lr) with its bottom at 10**-2.5, falling with the epochs."""
    return (math.log10(lr) + 2.5) ** 2 + 1.0 / epoch + extra


def drive(server: LiveServer, worker_token: str, name: str, *, epochs: int = 5,
          forced: dict[int, str] | None = None, extra: Any = None) -> dict[str, int]:
    """Be the worker: claim every trial of `name` in turn, report each epoch, finish. Trials whose
    claim order is in `forced` end early after 2 epochs: "diverged" (pruned by the divergence
    guard) or "failed". Returns the count of each ending."""
    forced = forced or {}
    ended: dict[str, int] = {}
    with server.client(worker_token) as client:
        for order in range(100):
            claim = client.post("/api/v1/trials/claim", json={"worker_id": "test-plots", "studies": [name]})
            if claim.status_code == 204:
                return ended
            assert claim.status_code == 200, claim.text
            a = claim.json()
            trial, lease, params = a["trial_id"], a["lease_id"], a["params"]
            lr = params.get("lr", 1e-3)
            bump = extra(params) if extra else 0.0
            values: list[float] = []
            state: str = "complete"
            finish: dict[str, Any] = {}
            for epoch in range(1, epochs + 1):
                values.append(loss(lr, epoch, bump))
                r = client.post(f"/api/v1/trials/{trial}/report", json={"lease_id": lease, "step": epoch, "value": values[-1]})
                assert r.status_code == 200, r.text
                if forced.get(order) == "diverged" and epoch == 2:
                    state, finish = "pruned", {"reason": "diverged"}
                    break
                if forced.get(order) == "failed" and epoch == 2:
                    state, finish = "failed", {"error": "RuntimeError: <boom> & co", "reason": "exception"}
                    break
                if r.json()["prune"]:
                    state = "pruned"
                    break
            body = {"lease_id": lease, "state": state, **finish}
            if state == "complete":
                body["value"] = min(values)
            r = client.post(f"/api/v1/trials/{trial}/finish", json=body)
            assert r.status_code == 200, r.text
            ended[state] = ended.get(state, 0) + 1
    raise AssertionError("the study never ran out of trials")


@pytest.fixture(scope="module")
def finished(live_server: LiveServer, make_token: Any) -> dict[str, Any]:
    """A digits study of 10 trials, driven to its end: complete, median-pruned, diverged, failed."""
    team = f"p{uuid.uuid4().hex[:10]}"
    admin, worker = make_token(team, "admin"), make_token(team, "worker")
    name = f"plots-{uuid.uuid4().hex[:6]}"
    definition = digits_definition(
        name,
        workload={"model": "mlp", "dataset": "digits", "epochs": 5},
        pruner={"kind": "median", "n_startup_trials": 4, "n_warmup_steps": 2},
        budget={"n_trials": 10, "max_concurrent": 1},
    )
    with live_server.client(admin) as client:
        assert client.post("/api/v1/studies", json=definition).status_code == 201
    ended = drive(live_server, worker, name, forced={5: "diverged", 7: "failed"},
                  extra=lambda p: 0.2 * p["dropout"] + (0.1 if p["optimizer"] == "sgd" else 0.0))
    assert ended.get("complete", 0) >= 4 and ended.get("pruned", 0) >= 1 and ended.get("failed") == 1, ended
    with live_server.client(admin) as client:
        summary = client.get(f"/api/v1/studies/{name}").json()
    assert summary["state"] == "finished", summary
    return {"team": team, "admin": admin, "worker": worker, "name": name, "summary": summary, "ended": ended}


def test_every_plot_kind_is_a_png_of_the_fixed_size(live_server: LiveServer, finished: dict[str, Any]) -> None:
    with live_server.client(finished["admin"]) as client:
        for kind in KINDS:
            r = client.get(f"/api/v1/studies/{finished['name']}/plots/{kind}")
            assert r.status_code == 200, (kind, r.text)
            assert r.headers["content-type"] == "image/png"
            assert_png(r.content)


def test_plots_are_deterministic_and_safe_to_draw_concurrently(live_server: LiveServer, finished: dict[str, Any]) -> None:
    """The routes draw in the server's thread pool: the same plot asked for 3 times at once comes
    back identical (no shared pyplot state between threads; fANOVA seeded)."""
    url = f"{live_server.url}/api/v1/studies/{finished['name']}/plots/"
    headers = {"Authorization": f"Bearer {finished['admin']}"}

    def fetch(kind: str) -> tuple[str, bytes]:
        r = httpx.get(url + kind, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        return kind, r.content

    with ThreadPoolExecutor(max_workers=15) as pool:
        results = list(pool.map(fetch, [k for k in KINDS for _ in range(3)]))
    for kind in KINDS:
        images = {data for k, data in results if k == kind}
        assert len(images) == 1, f"{kind}: {len(images)} different images for the same study"


def test_plot_errors(live_server: LiveServer, finished: dict[str, Any], make_token: Any) -> None:
    name = finished["name"]
    with live_server.client(finished["admin"]) as client:
        r = client.get(f"/api/v1/studies/{name}/plots/pie")
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        detail = r.json()["detail"]
        assert "kind" in detail and all(k in detail for k in KINDS), detail

        r = client.get("/api/v1/studies/no-such-study/plots/history")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        assert client.get("/api/v1/studies/no-such-study/report").status_code == 404

        # A fresh study: nothing to draw yet, for any kind; a 409 that says why, never a 500.
        fresh = f"fresh-{uuid.uuid4().hex[:6]}"
        assert client.post("/api/v1/studies", json=digits_definition(fresh)).status_code == 201
        for kind in KINDS:
            r = client.get(f"/api/v1/studies/{fresh}/plots/{kind}")
            assert r.status_code == 409, (kind, r.text)
            assert r.json()["detail"], r.text
        assert "no complete trial" in client.get(f"/api/v1/studies/{fresh}/plots/history").json()["detail"]
        # Its report still renders, with notes instead of plots.
        r = client.get(f"/api/v1/studies/{fresh}/report")
        assert r.status_code == 200 and "<img" not in r.text and "No complete trial yet" in r.text

    # A viewer reads plots; a worker token is not for reading; another team sees nothing.
    with live_server.client(make_token(finished["team"], "viewer")) as client:
        r = client.get(f"/api/v1/studies/{name}/plots/history")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert client.get(f"/api/v1/studies/{name}/report").status_code == 200
    with live_server.client(finished["worker"]) as client:
        assert client.get(f"/api/v1/studies/{name}/plots/history").status_code == 403
    with live_server.client(make_token(f"o{uuid.uuid4().hex[:10]}", "admin")) as client:
        for path in (f"/api/v1/studies/{name}/plots/history", f"/api/v1/studies/{name}/report"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["error"] == "not_found", (path, r.text)
    with live_server.client(finished["admin"]) as client:
        assert client.get(f"/api/v1/studies/{name}/plots/history", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_report_is_self_contained(live_server: LiveServer, finished: dict[str, Any]) -> None:
    with live_server.client(finished["admin"]) as client:
        r = client.get(f"/api/v1/studies/{finished['name']}/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    # Every plot is drawable for this study, and each is embedded, not linked.
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(sources) == len(KINDS)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"\s(href|src|action)\s*=\s*(?![\"']?data:)", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    best = finished["summary"]["best_trial"]
    assert f"Trial {best['number']}" in page and f"{best['value']:.6g}" in page
    assert "dataset:" in page and "digits" in page  # the definition, as YAML
    assert "fANOVA" in page and "<td>lr</td>" in page  # the importance table


def test_the_report_escapes_user_input(live_server: LiveServer, make_token: Any) -> None:
    """A user workload takes any fixed values and categorical choices: markup in them is text,
    and a '$' (matplotlib's mathtext) does not break a plot."""
    team = f"x{uuid.uuid4().hex[:10]}"
    admin, worker = make_token(team, "admin"), make_token(team, "worker")
    name = f"escape-{uuid.uuid4().hex[:6]}"
    script = "<script>alert(1)</script>"
    definition = {
        "name": name,
        "workload": {"model": "plugin", "entry": "tests.plugins:quadratic", "epochs": 2, "note": f"{script} & \"q\""},
        "space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "act": {"type": "categorical", "choices": [script, "$\\frac{$", "relu"]},
        },
        "sampler": {"kind": "random", "seed": 3},
        "pruner": {"kind": "none"},
        "budget": {"n_trials": 6, "max_concurrent": 1},
    }
    with live_server.client(admin) as client:
        r = client.post("/api/v1/studies", json=definition)
        assert r.status_code == 201, r.text
    drive(live_server, worker, name, epochs=2, extra=lambda p: {"relu": 0.0, "$\\frac{$": 0.3}.get(p["act"], 0.6))
    with live_server.client(admin) as client:
        for kind in KINDS:
            r = client.get(f"/api/v1/studies/{name}/plots/{kind}")
            assert r.status_code == 200, (kind, r.text)
            assert_png(r.content)
        page = client.get(f"/api/v1/studies/{name}/report").text
    assert script not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;" in page and "&quot;q&quot;" in page
    assert len(re.findall(r"<img ", page)) == len(KINDS)


# --------------------------------------------------------------------------- unit: the lr variants


def _trial(number: int, state: TrialState, params: dict[str, Any], dists: dict[str, Any], value: float | None = None,
           intermediate: dict[int, float] | None = None, **user_attrs: Any) -> FrozenTrial:
    t = create_trial(state=state, value=value, params=params, distributions=dists,
                     intermediate_values=intermediate or {}, user_attrs=user_attrs)
    t.number = number
    return t


def sweep_spec() -> StudySpec:
    return StudySpec.model_validate({
        "name": "sweep", "kind": "lr_sweep", "workload": {"model": "mlp", "dataset": "digits", "epochs": 3},
        "sweep": {"low": 1e-5, "high": 1.0, "points_per_decade": 2, "seeds": 2},
    })


def sweep_trials(spec: StudySpec) -> list[FrozenTrial]:
    assert spec.sweep is not None
    dists = {"lr": FloatDistribution(spec.sweep.low, spec.sweep.high, log=True), "seed": IntDistribution(0, 1)}
    out, n = [], 0
    for lr in spec.sweep.grid():
        for seed in (0, 1):
            params = {"lr": lr, "seed": seed}
            metrics = {"initial_val_loss": 2.3}
            if lr >= 0.3:  # the top of the grid blows up
                out.append(_trial(n, TrialState.PRUNED, params, dists, intermediate={1: 50.0}, reason="diverged", metrics=metrics))
            else:
                value = min(2.2, 0.15 + 0.05 * (math.log10(lr) + 2.5) ** 2) + 0.01 * seed
                out.append(_trial(n, TrialState.COMPLETE, params, dists, value=value, intermediate={1: value + 0.3, 2: value}, metrics=metrics))
            n += 1
    return out


def test_the_lr_plot_of_an_lr_sweep() -> None:
    spec = sweep_spec()
    trials = sweep_trials(spec)
    assert_png(plots.render("lr", spec, trials))
    # The other kinds work on a sweep too (importance over lr and seed).
    for kind in ("history", "curves", "importance", "parallel"):
        assert_png(plots.render(kind, spec, trials))
    # Nothing finished yet: a 409, not an empty plot.
    with pytest.raises(plots.NothingToPlot):
        plots.render("lr", spec, [])


def finder_spec() -> StudySpec:
    return StudySpec.model_validate({"name": "finder", "kind": "lr_finder", "workload": {"model": "mlp", "dataset": "digits", "epochs": 1}})


def finder_trial(finder: LrFinder, state: TrialState = TrialState.COMPLETE, steps: int | None = None) -> FrozenTrial:
    """A range test's curve: falls from 2.3 towards 0.3 by lr 1e-2, then explodes."""
    raw = []
    for i in range(steps or finder.steps):
        x = math.log10(finder.lr_at(i))
        raw.append(2.3 - 2.0 / (1 + math.exp(-2 * (x + 4))) + (0 if x < -2 else 10 ** (1.5 * (x + 2)) - 1))
    losses = smooth(raw, finder.smoothing)
    return _trial(0, state, {}, {}, value=min(losses) if state == TrialState.COMPLETE else None,
                  intermediate=dict(enumerate(losses)))


def test_the_lr_plot_of_an_lr_range_test() -> None:
    spec = finder_spec()
    finder = spec.finder or LrFinder()
    image = assert_png(plots.render("lr", spec, [finder_trial(finder)]))
    # The suggested range is shaded green: some pixels are the light green of the span.
    pixels = np.asarray(image.convert("RGB"), dtype=int).reshape(-1, 3)
    greenish = (pixels[:, 1] > pixels[:, 0] + 10) & (pixels[:, 1] > pixels[:, 2] + 10)
    assert greenish.sum() > 1000
    # Still running: the curve so far, without a suggestion.
    assert_png(plots.render("lr", spec, [finder_trial(finder, TrialState.RUNNING, steps=40)]))
    with pytest.raises(plots.NothingToPlot, match="range test"):
        plots.render("lr", spec, [])


def test_nothing_to_plot_is_a_conflict_that_says_why() -> None:
    spec = StudySpec.model_validate(digits_definition("unit"))
    dists = {"lr": FloatDistribution(1e-5, 1.0, log=True), "optimizer": CategoricalDistribution(["sgd", "adam"])}
    one = [_trial(0, TrialState.COMPLETE, {"lr": 1e-3, "optimizer": "sgd"}, dists, value=0.5, intermediate={1: 0.5})]
    assert plots.NothingToPlot("x").status_code == 409
    with pytest.raises(plots.NothingToPlot, match="at least 2 complete trials"):
        plots.render("importance", spec, one)
    same = one + [_trial(1, TrialState.COMPLETE, {"lr": 1e-3, "optimizer": "sgd"}, dists, value=0.4)]
    with pytest.raises(plots.NothingToPlot, match="varies"):
        plots.importances(spec, same)
    for kind in ("history", "curves", "lr", "parallel"):
        assert_png(plots.render(kind, spec, one))
    # A maximized objective and a study without lr.
    no_lr = StudySpec.model_validate(digits_definition("nolr", direction="maximize", space={"dropout": {"type": "float", "low": 0.2, "high": 0.5}}))
    trials = [_trial(i, TrialState.COMPLETE, {"dropout": d}, {"dropout": FloatDistribution(0.2, 0.5)}, value=v)
              for i, (d, v) in enumerate([(0.2, 0.9), (0.3, 0.95), (0.5, 0.8)])]
    assert_png(plots.render("history", no_lr, trials))
    assert set(plots.importances(no_lr, trials)) == {"dropout"}
    with pytest.raises(plots.NothingToPlot, match="does not search `lr`"):
        plots.render("lr", no_lr, trials)
    with pytest.raises(ValueError, match="kind"):
        plots.render("pie", spec, one)


def _green_pixels(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("RGB"), dtype=int).reshape(-1, 3)
    return int(((pixels[:, 1] > pixels[:, 0] + 10) & (pixels[:, 1] > pixels[:, 2] + 10)).sum())


def test_the_lr_plot_shades_the_range_auto_lr_range_chose() -> None:
    space = {"lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}, "dropout": {"type": "float", "low": 0.2, "high": 0.5}}
    spec = StudySpec.model_validate(digits_definition("auto", auto_lr_range=True, space=space))
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "dropout": FloatDistribution(0.2, 0.5)}
    trials = [_trial(i, TrialState.COMPLETE, {"lr": lr, "dropout": 0.3}, dists, value=loss(lr, 5))
              for i, lr in enumerate([2e-4, 1e-3, 3e-3, 1e-2, 5e-2])]
    plain = assert_png(plots.render("lr", spec, trials, {"lr_range": None}))
    shaded = assert_png(plots.render("lr", spec, trials, {"lr_range": {"status": "narrowed", "narrowed": [1e-3, 1e-2]}}))
    assert _green_pixels(shaded) > _green_pixels(plain) + 1000


def test_reports_of_an_lr_sweep_and_a_range_test() -> None:
    from datetime import datetime

    from service.engine import study_page
    from service.engine.summaries import Diagnosis, StudySummary

    for spec, trials, drawn in (
        (sweep_spec(), sweep_trials(sweep_spec()), set(KINDS)),
        # One run with no params: no importances, no parallel coordinates; notes say so.
        (finder_spec(), [finder_trial(LrFinder())], {"history", "curves", "lr"}),
    ):
        summary = StudySummary(
            name=spec.name, optuna_name=f"t/{spec.name}", direction=spec.direction, state="finished",
            n_trials=spec.budget.n_trials, counts={"COMPLETE": len(trials)}, best_trial=None, created_at=datetime.now(),
            definition=spec.model_dump(mode="json"), diagnosis=Diagnosis({}, ["lr <b>x</b>"]), kind=spec.kind,
        )
        page = study_page.build(summary, plots.PlotInputs(spec, trials))
        shown = set(re.findall(r"<figure id=\"plot-(\w+)\"><img", page))
        assert shown == drawn, (spec.kind, shown)
        for kind in set(KINDS) - drawn:
            assert f"<p class=\"note\" id=\"plot-{kind}\">" in page
        assert "lr &lt;b&gt;x&lt;/b&gt;" in page and f"kind: {spec.kind}" in page
