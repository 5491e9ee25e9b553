"""The red-team review's hostile inputs (../shared/reviews/security-2026-12.md, findings 1, 3-6
and 11), each replayed against a real `hpo serve`: every one answers a 4xx in our error shape,
never a 500, and stores nothing; the few that must be accepted (a finish whose error text holds a
NUL) keep the lease's bookkeeping whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.spec.limits import MAX_CHOICES, MAX_GRID_POINTS, MAX_SPACE_CHOICES
from tests.conftest import LiveServer, auth, digits_definition
from tests.test_hostile_input import stored

PLUGIN = {"model": "plugin", "entry": "examples.plugin_quadratic:train"}


@pytest.fixture(scope="module")
def server(db_url: str) -> Iterator[LiveServer]:
    s = LiveServer(db_url, HPO_LEASE_SECONDS="30", HPO_HEARTBEAT_SECONDS="5")
    yield s
    s.stop()


def plugin_study(name: str, space: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"name": name, "workload": PLUGIN, "space": space, "budget": {"n_trials": 5, "max_concurrent": 5}, **more}


def assert_refused(response: httpx.Response, *needles: str, status: int = 422) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return body["detail"]


# ---------------------------------------------------------------- finding 1 and 11: sizes


@pytest.mark.parametrize(
    "space, needle",
    [
        # The review's reproduction: one int axis of 10^9 + 1 points.
        ({"x": {"type": "int", "low": 0, "high": 1_000_000_000}}, "1000000001"),
        # Axes that each look harmless but multiply to 10^9.
        ({n: {"type": "int", "low": 1, "high": 1000} for n in ("a", "b", "c")}, "1000000000"),
        # A float step of 1e-9 over [0, 1].
        ({"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 1e-9}}, "grid"),
    ],
)
def test_a_huge_grid_is_refused_at_creation(server: LiveServer, make_token: Any, team: str, db_url: str, space: dict[str, Any], needle: str) -> None:
    with server.client(make_token(team, "member")) as c:
        before = stored(db_url, team)
        r = c.post("/api/v1/studies", json=plugin_study("gridbig", space, sampler={"kind": "grid"}))
        assert_refused(r, needle, str(MAX_GRID_POINTS))
        assert stored(db_url, team) == before


def test_the_largest_allowed_grid_claims_without_growing_the_api(server: LiveServer, make_token: Any, team: str) -> None:
    """MAX_GRID_POINTS points (one axis of at most MAX_CHOICES values, times the others): claims
    index into the grid instead of building it, so the API's peak memory stays put. Optuna's own
    GridSampler builds and shuffles every point on every claim (about 150 bytes a point)."""
    axes = {"a": {"type": "int", "low": 1, "high": MAX_CHOICES}, "b": {"type": "int", "low": 1, "high": MAX_GRID_POINTS // MAX_CHOICES}}
    with server.client(make_token(team, "member")) as c, server.client(make_token(team, "worker")) as w:
        # A claim from a small grid first, so that what a first claim loads is not counted.
        small = {"a": {"type": "int", "low": 1, "high": 3}}
        c.post("/api/v1/studies", json=plugin_study("gridsmall", small, sampler={"kind": "grid"})).raise_for_status()
        w.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": ["gridsmall"]}).raise_for_status()
        r = c.post("/api/v1/studies", json=plugin_study("gridmax", axes, sampler={"kind": "grid", "seed": 3}, budget={"n_trials": 50, "max_concurrent": 50}))
        assert r.status_code == 201, r.text
        before = server.peak_rss_kb()
        seen = set()
        for _ in range(20):
            a = w.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": ["gridmax"]})
            assert a.status_code == 200, a.text
            seen.add((a.json()["params"]["a"], a.json()["params"]["b"]))
        grown_mb = (server.peak_rss_kb() - before) / 1024
    print(f"peak RSS grew {grown_mb:.1f} MB")
    assert len(seen) == 20  # every claim got its own grid point
    # Generous: the indexed grid needs about 1 MB per claim here, Optuna's GridSampler about 9 MB.
    assert grown_mb < 5, f"the API's peak memory grew {grown_mb:.1f} MB over 20 claims of a {MAX_GRID_POINTS}-point grid"


def test_a_categorical_with_too_many_choices_is_refused(server: LiveServer, make_token: Any, team: str, db_url: str) -> None:
    with server.client(make_token(team, "member")) as c:
        before = stored(db_url, team)
        many = {"type": "categorical", "choices": list(range(MAX_CHOICES + 1))}
        assert_refused(c.post("/api/v1/studies", json=plugin_study("bigcat", {"x": many})), "space.x", "choices", str(MAX_CHOICES))
        # Many categoricals at the limit each: the space as a whole has a bound too.
        wide = {f"x{i}": {"type": "categorical", "choices": list(range(MAX_CHOICES))} for i in range(MAX_SPACE_CHOICES // MAX_CHOICES + 1)}
        assert_refused(c.post("/api/v1/studies", json=plugin_study("widecat", wide)), "space", str(MAX_SPACE_CHOICES))
        assert stored(db_url, team) == before


# ---------------------------------------------------------------- finding 3: definitions that broke claims


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"sampler": {"kind": "random", "seed": -1}}, "sampler.seed"),
        ({"sampler": {"kind": "tpe", "seed": 2**32}}, "sampler.seed"),
        ({"sampler": {"kind": "qmc", "seed": 2**40}}, "sampler.seed"),
        # Valid for the first claims, then seed + n_claimed passes 2^32 - 1.
        ({"sampler": {"kind": "random", "seed": 4294967294}}, "sampler.seed"),
        ({"space": {"x": {"type": "int", "low": 0, "high": 10**400}}}, "space.x"),
        ({"space": {"x": {"type": "float", "low": -1e308, "high": 1e308}}}, "space.x"),
        ({"space": {"x": {"type": "float", "low": 0, "high": 1e308, "step": 1e-308}}}, "space.x"),
    ],
)
def test_definitions_that_broke_every_claim_are_refused(
    server: LiveServer, make_token: Any, team: str, db_url: str, change: dict[str, Any], needle: str
) -> None:
    definition = {**plugin_study("broken", {"x": {"type": "float", "low": 0.0, "high": 1.0}}), **change}
    with server.client(make_token(team, "member")) as c:
        before = stored(db_url, team)
        # The int of 400 digits is sent as written (json.dumps keeps Python's big ints).
        r = c.post("/api/v1/studies", content=json.dumps(definition), headers={"Content-Type": "application/json"})
        assert_refused(r, needle)
        assert stored(db_url, team) == before


# ---------------------------------------------------------------- finding 4: nesting


def deep_report() -> bytes:
    return ('{"lease_id":"x","step":1,"value":' + "[" * 100_000 + "]" * 100_000 + "}").encode()


@pytest.mark.parametrize("token", ["nope", "worker"])
def test_a_deeply_nested_report_is_a_4xx_not_a_traceback(server: LiveServer, make_token: Any, team: str, token: str) -> None:
    bearer = make_token(team, "worker") if token == "worker" else "nope"
    r = httpx.post(f"{server.url}/api/v1/trials/1/report", content=deep_report(), headers={**auth(bearer), "Content-Type": "application/json"})
    assert r.status_code in (401, 422), r.text
    assert set(r.json()) == {"error", "detail"}
    # The connection that carried it still works.
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    "body, media",
    [
        (b'{"name": "deep", "workload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json"),
        (b"name: deep\nworkload: " + b"[" * 2000 + b"]" * 2000 + b"\n", "application/yaml"),
        (b"name: deep\nworkload: " + b"{b: " * 1200 + b"1" + b"}" * 1200 + b"\n", "application/yaml"),
    ],
)
def test_a_deeply_nested_definition_is_422(server: LiveServer, make_token: Any, team: str, db_url: str, body: bytes, media: str) -> None:
    with server.client(make_token(team, "member")) as c:
        before = stored(db_url, team)
        assert_refused(c.post("/api/v1/studies", content=body, headers={"Content-Type": media}), "body")
        assert stored(db_url, team) == before


def test_a_deeply_nested_claim_body_is_4xx(server: LiveServer, make_token: Any, team: str) -> None:
    with server.client(make_token(team, "worker")) as w:
        r = w.post("/api/v1/trials/claim", content=b'{"worker_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), r.text
        assert set(r.json()) == {"error", "detail"}


# ---------------------------------------------------------------- finding 5: NUL and lone surrogates


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/v1/studies/bonly%00"),
        ("GET", "/api/v1/studies/bonly%00/trials"),
        ("GET", "/api/v1/studies/bonly%00/report"),
        ("GET", "/api/v1/studies/bonly%00/plots/lr"),
        ("POST", "/api/v1/studies/bonly%00/stop"),
        ("DELETE", "/api/v1/studies/a%00"),
        ("DELETE", "/api/v1/tokens/hpo_%00"),
        ("GET", "/api/v1/studies/bonly%0A"),
    ],
)
def test_a_nul_in_the_path_is_4xx(server: LiveServer, make_token: Any, team: str, method: str, path: str) -> None:
    with server.client(make_token(team)) as c:
        r = c.request(method, path)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) == {"error", "detail"}


@pytest.mark.parametrize("bad", ["x\u0000y", "x\udfffy"])
def test_nul_and_lone_surrogates_in_bodies_are_422(server: LiveServer, make_token: Any, team: str, db_url: str, bad: str) -> None:
    admin, worker, member = make_token(team), make_token(team, "worker"), make_token(team, "member")
    # json.dumps writes a lone surrogate as the escape \udfff, as a hostile client would.
    with server.client(admin) as a, server.client(worker) as w, server.client(member) as m:
        before = stored(db_url, team)
        as_json = {"Content-Type": "application/json"}
        assert_refused(a.post("/api/v1/tokens", content=json.dumps({"role": "viewer", "name": bad}), headers=as_json), "name")
        assert_refused(w.post("/api/v1/trials/claim", content=json.dumps({"worker_id": bad}), headers=as_json), "worker_id")
        for definition, where in [
            (plugin_study("nul", {"x": {"type": "categorical", "choices": ["a", bad]}}), "space.x.choices"),
            ({**plugin_study("nul", {}), "workload": {"model": "command", "command": "examples/report_steps.py", "args": [bad]}}, "workload.args"),
            ({**plugin_study("nul", {}), "workload": {**PLUGIN, "label": bad}}, "workload.label"),
            (plugin_study("nul", {bad: {"type": "float", "low": 0, "high": 1}}), "space"),
        ]:
            assert_refused(m.post("/api/v1/studies", content=json.dumps(definition), headers={"Content-Type": "application/json"}), where)
        assert_refused(m.post("/api/v1/studies", content=b'name: nul\nworkload: {model: plugin, entry: "x:y", label: "a\\0b"}\n', headers={"Content-Type": "application/yaml"}), "workload.label")
        assert stored(db_url, team) == before


def test_a_nul_in_a_finish_error_keeps_the_lease_and_queues_the_retry(server: LiveServer, make_token: Any, team: str) -> None:
    """The review's worst case: a crashing native library's stderr (with a NUL) in `error`. The
    finish must end the lease as asked, not leave it open until the reaper calls it lost."""
    definition = plugin_study("nulfinish", {"x": {"type": "float", "low": 0.0, "high": 1.0}}, budget={"n_trials": 1, "max_concurrent": 1, "max_retries": 1})
    with server.client(make_token(team, "member")) as m, server.client(make_token(team, "worker")) as w:
        m.post("/api/v1/studies", json=definition).raise_for_status()
        a = w.post("/api/v1/trials/claim", json={"worker_id": "w"}).json()
        finish = {"lease_id": a["lease_id"], "state": "failed", "error": "segfault \u0000 in libfoo \udfff", "reason": "interrupted"}
        r = w.post(f"/api/v1/trials/{a['trial_id']}/finish", content=json.dumps(finish), headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        # The same finish again is the harmless repeat, not 409 "already ended as lost".
        again = w.post(f"/api/v1/trials/{a['trial_id']}/finish", content=json.dumps(finish), headers={"Content-Type": "application/json"})
        assert again.status_code == 200, again.text
        trials = m.get("/api/v1/studies/nulfinish/trials").json()["trials"]
        first = next(t for t in trials if t["number"] == a["number"])
        assert first["state"] == "FAIL" and "segfault" in first["error"] and "\u0000" not in first["error"]
        # reason interrupted: its retry is queued (it would not be, had the lease been lost).
        assert any(t["retry_of"] == a["number"] for t in trials), trials


# ---------------------------------------------------------------- finding 6: steps beyond int4


@pytest.mark.parametrize("step", [2**31, 99999999999999999999])
def test_a_step_beyond_the_column_is_422(server: LiveServer, make_token: Any, team: str, db_url: str, step: int) -> None:
    definition = plugin_study("bigstep", {"x": {"type": "float", "low": 0.0, "high": 1.0}})
    with server.client(make_token(team, "member")) as m, server.client(make_token(team, "worker")) as w:
        m.post("/api/v1/studies", json=definition).raise_for_status()
        a = w.post("/api/v1/trials/claim", json={"worker_id": "w"}).json()
        before = stored(db_url, team)
        r = w.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": step, "value": 1.0})
        assert_refused(r, "step", str(2**31 - 1))
        r = w.post(f"/api/v1/trials/{a['trial_id']}/checkpoint", params={"lease_id": a["lease_id"], "step": step, "value": 1.0}, content=b"x")
        assert_refused(r, "step")
        assert stored(db_url, team) == before
        ok = w.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 2**31 - 1, "value": 1.0})
        assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------- finding 16: names


@pytest.mark.parametrize(
    "space, workload, needle",
    [
        # re.match with `$` let a trailing newline through.
        ({"x\n": {"type": "float", "low": 0.0, "high": 1.0}}, {}, "space.x"),
        ({}, {"y\n": 1}, "workload.y"),
        # HPO_PARAM_LR would be both.
        ({"lr": {"type": "float", "low": 0.001, "high": 0.1}}, {"LR": 0.01}, "differ only in case"),
    ],
)
def test_user_parameter_names_are_whole_and_distinct(server: LiveServer, make_token: Any, team: str, db_url: str, space: dict[str, Any], workload: dict[str, Any], needle: str) -> None:
    with server.client(make_token(team, "member")) as c:
        before = stored(db_url, team)
        definition = {**plugin_study("names", space), "workload": {**PLUGIN, **workload}}
        assert_refused(c.post("/api/v1/studies", json=definition), needle)
        assert stored(db_url, team) == before
