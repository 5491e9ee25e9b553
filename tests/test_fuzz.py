"""Schemathesis against the app's own /openapi.json, with a member token: no 5xx, and no
rejected (4xx) request changes anything in the database.

The fuzzer gets a database of its own (so the reaper and other tests cannot change rows under
it). Every request is bracketed by a fingerprint of every row of every hpo_* and Optuna table;
after a 4xx the fingerprint must be the one from before the request. Accepted requests (a study
created, stopped or deleted) simply start a new baseline. Hypothesis is derandomized, so a run
is reproducible."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
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


@pytest.fixture(scope="module")
def fuzz_app(new_database: Callable[[], str]) -> Any:
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.migrate import migrate

    url = new_database()
    settings = Settings(database_url=url, lease_seconds=30, heartbeat_seconds=1)
    migrate(url, settings)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client, url


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
