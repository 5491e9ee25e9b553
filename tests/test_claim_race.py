"""Claims race from many workers through two API processes: the study's row lock keeps the
budget exact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import optuna
import pytest

from tests.conftest import LiveServer, digits_definition


@pytest.fixture
def second_server(db_url: str) -> Iterator[LiveServer]:
    server = LiveServer(db_url)
    yield server
    server.stop()


def test_eight_threads_two_api_processes_exactly_n_trials(
    live_server: LiveServer, second_server: LiveServer, make_token: Any, team: str, db_url: str
) -> None:
    token = make_token(team)
    definition = digits_definition("race", budget={"n_trials": 5, "max_concurrent": 8})
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=definition).status_code == 201

    results: list[int] = []
    numbers: list[int] = []
    barrier = threading.Barrier(8)
    lock = threading.Lock()

    def worker(i: int) -> None:
        server = live_server if i % 2 else second_server
        with server.client(token) as c:
            barrier.wait()
            r = c.post("/api/v1/trials/claim", json={"worker_id": f"w{i}"})
        with lock:
            results.append(r.status_code)
            if r.status_code == 200:
                numbers.append(r.json()["number"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(results) == [200] * 5 + [204] * 3
    assert sorted(numbers) == [0, 1, 2, 3, 4]
    assert len(optuna.load_study(study_name=f"{team}/race", storage=db_url).trials) == 5


def test_max_concurrent_holds_under_a_race(live_server: LiveServer, second_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    definition = digits_definition("race-cap", budget={"n_trials": 50, "max_concurrent": 3})
    with live_server.client(token) as c:
        c.post("/api/v1/studies", json=definition)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        with (live_server if i % 2 else second_server).client(token) as c:
            barrier.wait()
            results.append(c.post("/api/v1/trials/claim", json={"worker_id": f"w{i}"}).status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 3
