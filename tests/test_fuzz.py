"""Schemathesis against the app's own /openapi.json, with a member token: no 5xx, and no
rejected (4xx) request changes anything in the database.

The fuzzer gets a database of its own (so the reaper and other tests cannot change rows under
it). Every request is bracketed by a fingerprint of every row of every hpo_* and Optuna table;
after a 4xx the fingerprint must be the one from before the request. Accepted requests (a study
created, stopped or deleted) simply start a new baseline. Hypothesis is derandomized, so a run
is reproducible."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from service.settings import Settings
from tests.conftest import auth, digits_definition

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, strategies  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

EXAMPLES_PER_OPERATION = 75
MIN_REQUESTS = 1000
# Columns that a rejected request may legitimately touch: a token's last use (written at most
# once a minute, on authentication, before the request is judged).
VOLATILE = {"hpo_tokens": {"last_used_at"}}


def fingerprint(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, str]]:
    tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    out = {}
    for table in tables:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", (table,)
            )
            if r[0] not in VOLATILE.get(table, set())
        ]
        row = ", ".join(f'"{c}"' for c in columns)
        count, digest = conn.execute(
            f'SELECT count(*), md5(coalesce(string_agg(r::text, \',\' ORDER BY r::text), \'\')) FROM (SELECT {row} FROM "{table}") r'
        ).fetchone()
        out[table] = (count, digest)
    return out


def _app_on_a_new_database(new_database: Callable[[], str]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.migrate import migrate

    url = new_database()
    settings = Settings(database_url=url, lease_seconds=30, heartbeat_seconds=1, auth_failures_per_minute=0)
    migrate(url, settings)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client, url


@pytest.fixture(scope="module")
def fuzz_app(new_database: Callable[[], str]) -> Iterator[Any]:
    yield from _app_on_a_new_database(new_database)


@pytest.fixture
def hostile_app(new_database: Callable[[], str]) -> Iterator[Any]:
    """An app of its own: schemathesis runs the fuzz app's lifespan, which ends its report batcher."""
    yield from _app_on_a_new_database(new_database)


def test_fuzzing_the_api_finds_no_5xx_and_rejections_change_nothing(fuzz_app: Any, make_token: Any) -> None:
    app, client, url = fuzz_app
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import create_token, ensure_team

    engine = make_engine(url, Settings(database_url=url), application_name="hpo-fuzz")
    with make_sessionmaker(engine).begin() as session:
        token = create_token(session, ensure_team(session, "fuzz"), "member")
    engine.dispose()
    # Something to find under a known name, besides what the fuzzer makes up.
    assert client.post("/api/v1/studies", json=digits_definition("known"), headers=auth(token)).status_code == 201

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    started = time.monotonic()
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        state = {"before": fingerprint(conn)}

        for result in schema.get_all_operations():
            operation = result.ok()
            modes = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
            try:
                modes.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
            except Exception:  # noqa: BLE001 - an operation with nothing to get wrong
                pass

            @given(case=strategies.one_of(*modes))
            @hypothesis_settings(
                max_examples=EXAMPLES_PER_OPERATION,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: Any) -> None:
                response = case.call(headers=auth(token))
                statuses[response.status_code] += 1
                after = fingerprint(conn)
                label = f"{case.method} {case.formatted_path} -> {response.status_code}"
                if response.status_code >= 500:
                    failures.append(f"{label}: {response.text[:300]}")
                elif 400 <= response.status_code < 500 and after != state["before"]:
                    changed = sorted(t for t in after if after[t] != state["before"].get(t))
                    failures.append(f"{label} changed {changed}")
                state["before"] = after

            fuzz()

    total = sum(statuses.values())
    assert not failures, "\n".join(failures[:20])
    assert total >= MIN_REQUESTS, (total, statuses)
    assert any(400 <= s < 500 for s in statuses) and any(s < 300 for s in statuses), statuses
    print(f"fuzz: {total} requests in {time.monotonic() - started:.0f}s: {dict(sorted(statuses.items()))}")


HOSTILE_TEXT = ("x\u0000y", "x\udfffy", "x\ny")


def _mutations(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(where, hostile value) for every string leaf (and every key) of a JSON body, and 2^31
    for every `step`: the red-team review's inputs (security-2026-12.md, findings 5 and 6)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "step":
                yield path + (key,), 2**31
            for bad in HOSTILE_TEXT[:2]:
                yield path + (("key", key),), bad
            yield from _mutations(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _mutations(item, path + (i,))
    elif isinstance(value, str):
        for bad in HOSTILE_TEXT:
            yield path, bad


def _apply(value: Any, where: tuple[Any, ...], bad: Any) -> Any:
    value = json.loads(json.dumps(value))
    *parents, last = where
    node = value
    for step in parents:
        node = node[step]
    if isinstance(last, tuple):  # a key: rename it
        node[bad] = node.pop(last[1])
    else:
        node[last] = bad
    return value


def test_the_reviews_hostile_inputs_find_no_5xx_and_change_nothing(hostile_app: Any) -> None:
    """NUL, lone surrogates and newlines in every string and key of every JSON body and path,
    2^31 steps, and trailing slashes, `//` and `%0A` on every path: never a 5xx, and a refusal
    stores nothing. (A newline is fine text in a token's name; an unknown key is ignored.)"""
    app, client, url = hostile_app
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import create_token, ensure_team

    engine = make_engine(url, Settings(database_url=url), application_name="hpo-fuzz")
    with make_sessionmaker(engine).begin() as session:
        admin = create_token(session, ensure_team(session, "hostile"), "admin")
    engine.dispose()
    headers = auth(admin)
    assert client.post("/api/v1/studies", json=digits_definition("target"), headers=headers).status_code == 201
    claimed = client.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": ["target"]}, headers=headers).json()
    trial, lease = claimed["trial_id"], claimed["lease_id"]
    bodies = {
        "/api/v1/studies": digits_definition("hostile-new", workload={"model": "plugin", "entry": "examples.plugin_quadratic:train", "label": "x"},
                                             space={"x": {"type": "categorical", "choices": ["a", "b"]}}),
        "/api/v1/tokens": {"role": "viewer", "name": "n"},
        "/api/v1/trials/claim": {"worker_id": "w", "studies": ["target"]},
        f"/api/v1/trials/{trial}/report": {"lease_id": lease, "step": 1, "value": 1.0},
        f"/api/v1/trials/{trial}/heartbeat": {"lease_id": lease},
    }
    paths = [
        ("GET", "/api/v1/studies/target"), ("GET", "/api/v1/studies/target/trials"), ("GET", "/api/v1/studies/target/report"),
        ("GET", "/api/v1/studies/target/plots/curves"), ("POST", "/api/v1/studies/target/stop"), ("DELETE", "/api/v1/studies/target"),
        ("DELETE", "/api/v1/tokens/hpo_00000000"), ("GET", "/api/v1/audit"), ("GET", "/api/v1/presets"),
        ("GET", f"/api/v1/trials/{trial}/checkpoint"),
    ]
    failures: list[str] = []
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        before = fingerprint(conn)

        def judge(label: str, response: Any) -> None:
            nonlocal before
            after = fingerprint(conn)
            if response.status_code >= 500:
                failures.append(f"{label} -> {response.status_code}: {response.text[:200]}")
            elif response.status_code >= 400 and after != before:
                failures.append(f"{label} -> {response.status_code} changed {sorted(t for t in after if after[t] != before.get(t))}")
            before = after

        for path, body in bodies.items():
            for where, bad in _mutations(body):
                hostile = json.dumps(_apply(body, where, bad))
                judge(f"POST {path} {where}={bad!r}", client.post(path, content=hostile, headers={**headers, "Content-Type": "application/json"}))
        for method, path in paths:
            head, _, last = path.rpartition("/")
            variants = [path + "%00", path + "%0A", path + "/", path + "//", head + "//" + last, head + "/" + last + "%0A/"]
            if "target" in path:
                variants += [path.replace("target", "target%00"), path.replace("target", "target%0A"), path.replace("target", "ta%00rget")]
            for variant in variants:
                judge(f"{method} {variant}", client.request(method, variant, headers=headers))
        for name, value in (("lease_id", "x\u0000"), ("step", str(2**31)), ("limit", "1\u0000")):
            params = {"lease_id": lease, "step": 1, "value": 1.0, name: value}
            judge(f"POST checkpoint ?{name}={value!r}", client.post(f"/api/v1/trials/{trial}/checkpoint", params=params, content=b"x", headers=headers))
    assert not failures, "\n".join(failures[:30])
