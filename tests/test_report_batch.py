"""Reports in batches (service/engine/reports.py, service/api/report_batcher.py) and the
report fast path (service/api/report_fast_path.py): each report gets what it would get alone."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service.api.app import create_app
from service.api.deps import WORKER_ROLES, authorize
from service.api import report_batcher
from service.api.report_batcher import PendingReport, ReportBatcher
from service.api.report_fast_path import ROUTE, ReportFastPath
from service.db.session import make_engine, make_sessionmaker
from service.engine import reports as engine_reports
from service.engine.storage import make_storage
from service.errors import Conflict, Forbidden, Gone, LeaseLost, NotFound, Unauthorized
from service.settings import Settings
from tests.conftest import LiveServer, auth, digits_definition


def claim(api: Any, token: str, study: str) -> dict[str, Any]:
    response = api.post("/api/v1/trials/claim", json={"worker_id": "w", "studies": [study]}, headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()


def _authorize(caller: Any) -> None:
    authorize(WORKER_ROLES, ROUTE, caller)


class _Runtime:
    """What report_batcher.decide reads of the API's runtime."""

    def __init__(self, storage: Any, settings: Settings) -> None:
        from service.engine.state import EngineState

        self.storage, self.settings, self.state = storage, settings, EngineState()


def curves(db_url: str, optuna_name: str) -> dict[int, dict[int, float]]:
    study = optuna.load_study(study_name=optuna_name, storage=db_url)
    return {t._trial_id: dict(t.intermediate_values) for t in study.get_trials(deepcopy=False)}


@pytest.fixture
def sessions(settings: Settings) -> Iterator[Any]:
    engine = make_engine(settings.database_url, settings, application_name="hpo-tests")
    yield make_sessionmaker(engine)
    engine.dispose()


def test_a_batch_refreshes_its_studys_trial_view_once(
    api: Any, make_token: Any, team: str, settings: Settings, sessions: Any, db_url: str, monkeypatch: Any
) -> None:
    """The batch's database work does not grow with its reports (reports.py, step 4): one
    refresh of the view per study, however many of its trials report in the batch."""
    from service.engine.coordination import StudyTrials

    admin, worker = make_token(team), make_token(team, "worker")
    definition = digits_definition("viewed", budget={"n_trials": 10, "max_concurrent": 10})
    definition["pruner"] = {"kind": "median", "n_startup_trials": 0}
    assert api.post("/api/v1/studies", json=definition, headers=auth(admin)).status_code == 201
    held = [claim(api, worker, "viewed") for _ in range(5)]
    refreshes: list[int] = []
    original = StudyTrials.refresh_on
    monkeypatch.setattr(StudyTrials, "refresh_on", lambda self, conn: (refreshes.append(self.study_id), original(self, conn))[1])
    batch = [PendingReport(worker, a["trial_id"], a["lease_id"], 1, 0.5, authorize=_authorize) for a in held]
    with sessions() as session:
        outcomes = report_batcher.decide(session, _Runtime(make_storage(db_url, settings), settings), batch)
        session.commit()
    assert outcomes == [False] * 5
    assert len(refreshes) == 1, refreshes


def test_one_batch_gives_each_report_its_own_answer(api: Any, make_token: Any, team: str, settings: Settings, sessions: Any, db_url: str) -> None:
    admin, worker, viewer = make_token(team), make_token(team, "worker"), make_token(team, "viewer")
    other = make_token(f"{team}-other")
    for name, pruner in (("pruned", {"kind": "median", "n_startup_trials": 0}), ("free", {"kind": "none"}), ("stopped", None), ("gone", None)):
        definition = digits_definition(name, budget={"n_trials": 10, "max_concurrent": 10})
        if pruner:
            definition["pruner"] = pruner
        assert api.post("/api/v1/studies", json=definition, headers=auth(admin)).status_code == 201
    api.post("/api/v1/studies", json=digits_definition("theirs"), headers=auth(other))
    done = claim(api, worker, "pruned")
    # A finished trial sets the median: 1.0 at step 1 and 2.
    for step in (1, 2):
        api.post(f"/api/v1/trials/{done['trial_id']}/report", json={"lease_id": done["lease_id"], "step": step, "value": 1.0}, headers=auth(worker))
    api.post(f"/api/v1/trials/{done['trial_id']}/finish", json={"lease_id": done["lease_id"], "state": "complete", "value": 1.0}, headers=auth(worker))
    good, bad, told, twice = (claim(api, worker, "pruned") for _ in range(4))
    free, stopped, gone, theirs = claim(api, worker, "free"), claim(api, worker, "stopped"), claim(api, worker, "gone"), claim(api, other, "theirs")
    api.post("/api/v1/studies/stopped/stop", headers=auth(admin))
    assert api.delete("/api/v1/studies/gone", headers=auth(admin)).status_code == 204
    storage = make_storage(db_url, settings)
    storage.set_trial_state_values(told["trial_id"], TrialState.COMPLETE, [0.5])  # "told" from the dashboard

    def report(a: dict[str, Any], step: int, value: float, token: str = worker, lease: str | None = None) -> PendingReport:
        return PendingReport(token, a["trial_id"], lease or a["lease_id"], step, value, authorize=_authorize)

    batch = [
        report(good, 1, 0.5),  # better than the median: go on
        report(bad, 1, 2.0),  # worse: prune
        report(told, 1, 0.1),
        report(twice, 1, 1.5),
        report(twice, 2, 3.0),  # the same trial again in the batch: judged after its first report
        report(free, 1, 9.0),  # no pruner
        report(stopped, 1, 0.1),  # a stopped study lets its trials go
        report(gone, 1, 0.1),
        report(theirs, 1, 0.1),  # another team's trial
        report(good, 1, 0.5, token="hpo_00000000_nonsense"),
        report(good, 1, 0.5, token=viewer),
        report(bad, 2, 0.1, lease="00000000-0000-0000-0000-000000000000"),
        PendingReport(worker, 2**31 - 1, "x", 1, 0.1, authorize=_authorize),
    ]
    with sessions() as session:
        outcomes = report_batcher.decide(session, _Runtime(storage, settings), batch)
        session.commit()
    assert outcomes[:7] == [False, True, outcomes[2], True, True, False, True]
    kinds = [type(o) for o in outcomes[2:3] + outcomes[7:]]
    assert kinds == [Conflict, Gone, NotFound, Unauthorized, Forbidden, LeaseLost, NotFound], outcomes
    assert "viewer" in outcomes[10].detail and "POST /api/v1/trials/{trial_id}/report" in outcomes[10].detail

    stored = curves(db_url, f"{team}/pruned")
    assert stored[good["trial_id"]] == {1: 0.5} and stored[bad["trial_id"]] == {1: 2.0}
    assert stored[told["trial_id"]] == {} and stored[twice["trial_id"]] == {1: 1.5, 2: 3.0}
    assert curves(db_url, f"{team}/free")[free["trial_id"]] == {1: 9.0}
    assert curves(db_url, f"{team}/stopped")[stopped["trial_id"]] == {1: 0.1}
    assert curves(db_url, f"{team}-other/theirs")[theirs["trial_id"]] == {}

    # Each answer is the one the route gives the report alone.
    with sessions() as session:
        again = report_batcher.decide(session, _Runtime(storage, settings), [report(good, 1, 0.7), report(bad, 1, 0.1)])
    assert again == [False, True]  # the first value of a step stays


def test_a_batch_that_fails_as_a_whole_is_retried_report_by_report(api: Any, make_token: Any, team: str, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    worker = make_token(team, "worker")
    api.post("/api/v1/studies", json=digits_definition("whole"), headers=auth(make_token(team)))
    a = claim(api, worker, "whole")

    whole = engine_reports.report_many

    def broken(session: Any, storage: Any, state: Any, reports: Any, settings: Any) -> Any:
        if len(reports) > 1:
            raise RuntimeError("the batch broke")
        return whole(session, storage, state, reports, settings)

    monkeypatch.setattr(engine_reports, "report_many", broken)
    reports: ReportBatcher = api.app.state.reports
    runtime = reports.runtime
    batch = [
        PendingReport(worker, a["trial_id"], a["lease_id"], 1, 0.5, authorize=_authorize),
        PendingReport(worker, a["trial_id"], "00000000-0000-0000-0000-000000000000", 2, 0.5, authorize=_authorize),
    ]
    outcomes = reports._run(batch)
    assert outcomes[0] is False and isinstance(outcomes[1], LeaseLost)
    assert curves(db_url, f"{team}/whole")[a["trial_id"]] == {1: 0.5}
    assert runtime is reports.runtime


class _Blocking(ReportBatcher):
    """A batcher whose batches are recorded and answered without a database, the first one
    held until released."""

    def __init__(self, in_flight: int) -> None:
        self.max_batch, self.in_flight = 256, in_flight
        self._executor = ThreadPoolExecutor(max_workers=in_flight)
        self._queue = []
        self._drains = set()
        self._last_batch = 1
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def _run(self, reports: list[PendingReport]) -> list[Any]:
        self.batches.append([r.step for r in reports])
        if len(self.batches) == 1:
            self.release.wait(10)
        return [r.step % 2 == 0 if r.step % 3 else LeaseLost(f"step {r.step}") for r in reports]


@pytest.mark.parametrize("in_flight", [1, 2])
def test_reports_that_arrive_during_a_batch_go_together_into_the_next(in_flight: int) -> None:
    batcher = _Blocking(in_flight)

    async def scenario() -> list[Any]:
        def submit(step: int) -> Any:
            return asyncio.ensure_future(batcher.submit(PendingReport("t", step, "l", step, 0.0, authorize=_authorize)))

        first = submit(1)
        while not batcher.batches:
            await asyncio.sleep(0.01)
        rest = [submit(step) for step in range(2, 12)]
        gone = submit(12)
        await asyncio.sleep(0.05)
        gone.cancel()  # its client went away: the others are answered all the same
        batcher.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    answers = asyncio.run(scenario())
    assert batcher.batches == [[1], list(range(2, 13))]
    for step, answer in zip(range(1, 12), answers, strict=True):
        if step % 3 == 0:
            assert isinstance(answer, LeaseLost) and answer.detail == f"step {step}"
        else:
            assert answer is (step % 2 == 0)
    assert not batcher._drains  # every drain ended with its queue


def test_the_fast_path_answers_as_the_route_does(settings: Settings, make_token: Any, team: str) -> None:
    """The same requests, with and without ReportFastPath in front of the route."""
    with_fast = create_app(settings)
    without = create_app(settings, report_fast_path=False)
    assert isinstance(with_fast.fast_path, ReportFastPath) and without.fast_path is None
    admin, worker, viewer = make_token(team), make_token(team, "worker"), make_token(team, "viewer")
    with TestClient(with_fast, raise_server_exceptions=False) as fast, TestClient(without, raise_server_exceptions=False) as route:
        fast.post("/api/v1/studies", json=digits_definition("same", pruner={"kind": "median", "n_startup_trials": 0}), headers=auth(admin))
        done = claim(fast, worker, "same")
        fast.post(f"/api/v1/trials/{done['trial_id']}/report", json={"lease_id": done["lease_id"], "step": 1, "value": 1.0}, headers=auth(worker))
        fast.post(f"/api/v1/trials/{done['trial_id']}/finish", json={"lease_id": done["lease_id"], "state": "complete", "value": 1.0}, headers=auth(worker))
        a, ended = claim(fast, worker, "same"), claim(fast, worker, "same")
        fast.post(f"/api/v1/trials/{ended['trial_id']}/finish", json={"lease_id": ended["lease_id"], "state": "failed"}, headers=auth(worker))
        path = f"/api/v1/trials/{a['trial_id']}/report"
        body = {"lease_id": a["lease_id"], "step": 1, "value": 0.5}
        cases: list[tuple[str, dict[str, Any]]] = [
            (path, {"json": body, "headers": auth(worker)}),
            (path, {"json": {**body, "value": 2.0, "step": 2}, "headers": auth(worker)}),
            (path, {"json": body, "headers": auth(admin)}),
            (path, {"json": body, "headers": auth(viewer)}),
            (path, {"json": body, "headers": auth("hpo_00000000_nonsense")}),
            (path, {"json": body}),
            (path, {"json": body, "headers": {"Authorization": f"Basic {worker}"}}),
            (path, {"json": {**body, "lease_id": "00000000-0000-0000-0000-000000000000"}, "headers": auth(worker)}),
            (f"/api/v1/trials/{ended['trial_id']}/report", {"json": {**body, "lease_id": ended["lease_id"]}, "headers": auth(worker)}),
            ("/api/v1/trials/999999999/report", {"json": body, "headers": auth(worker)}),
            ("/api/v1/trials/abc/report", {"json": body, "headers": auth(worker)}),
            (path, {"json": {**body, "step": -1}, "headers": auth(worker)}),
            (path, {"json": {**body, "step": -1}, "headers": auth(viewer)}),
            (path, {"content": b"{not json", "headers": auth(worker)}),
            (path, {"content": b"[1, 2]", "headers": auth(worker)}),
            # The red-team review's (findings 4 and 6): nested past the recursion limit, a step
            # beyond Optuna's int4 column, a NUL in the lease; with and without a valid token.
            (path, {"content": b'{"lease_id":"x","step":1,"value":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "headers": auth(worker)}),
            (path, {"content": b'{"lease_id":"x","step":1,"value":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "headers": auth("nope")}),
            (path, {"json": {**body, "step": 2**31}, "headers": auth(worker)}),
            (path, {"content": json.dumps({**body, "lease_id": "x\u0000"}).encode(), "headers": auth(worker)}),
        ]
        seen = set()
        for url, request in cases:
            answers = [(r.status_code, r.json(), r.headers.get("www-authenticate")) for r in (client.post(url, **request) for client in (fast, route))]
            assert answers[0] == answers[1], (url, request, answers)
            seen.add(answers[0][0])
        assert seen == {200, 401, 403, 404, 409, 422}


WHEN = {"n_startup_trials": 2, "n_warmup_steps": 1, "interval_steps": 1, "n_min_trials": 1}
JUDGES = {
    "median": ({"kind": "median", **WHEN}, optuna.pruners.MedianPruner(**WHEN)),
    "percentile": ({"kind": "percentile", "percentile": 25.0, **WHEN}, optuna.pruners.PercentilePruner(25.0, **WHEN)),
}


@pytest.mark.parametrize("kind", list(JUDGES))
def test_concurrent_reports_through_a_live_server_are_judged_as_optuna_judges_them(live_server: LiveServer, make_token: Any, team: str, kind: str) -> None:
    """Many workers at once (their reports share batches): every answer is Optuna's MedianPruner's
    (or PercentilePruner's) on the completed trials and the trial's own curve so far."""
    admin, worker = make_token(team), make_token(team, "worker")
    pruner_spec, pruner = JUDGES[kind]
    n_done, n_running, steps = 4, 12, 6
    with live_server.client(admin) as c:
        c.post("/api/v1/studies", json=digits_definition(f"many-{kind}", pruner=pruner_spec, budget={"n_trials": 100, "max_concurrent": 100})).raise_for_status()
    rng = random.Random(7)
    completed = [[rng.uniform(0.2, 1.0) for _ in range(steps)] for _ in range(n_done)]
    with live_server.client(worker) as c:
        for curve in completed:
            a = claim(c, worker, f"many-{kind}")
            for step, value in enumerate(curve, 1):
                c.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": step, "value": value}).raise_for_status()
            c.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "complete", "value": min(curve)}).raise_for_status()
        running = [claim(c, worker, f"many-{kind}") for _ in range(n_running)]
    curves_now = [[rng.uniform(0.1, 1.1) for _ in range(steps)] for _ in range(n_running)]

    def work(a: dict[str, Any], curve: list[float]) -> list[bool]:
        with live_server.client(worker) as c:
            base = f"/api/v1/trials/{a['trial_id']}/report"
            return [c.post(base, json={"lease_id": a["lease_id"], "step": s, "value": v}).json()["prune"] for s, v in enumerate(curve, 1)]

    with ThreadPoolExecutor(max_workers=n_running) as pool:
        answers = list(pool.map(work, running, curves_now))

    def judged_by(judge: optuna.pruners.BasePruner) -> list[list[bool]]:
        study = optuna.create_study(pruner=judge)
        for curve in completed:
            study.add_trial(optuna.trial.create_trial(value=min(curve), intermediate_values=dict(enumerate(curve, 1))))
        return [
            [judge.prune(study, optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values=dict(enumerate(curve[:k], 1)))) for k in range(1, steps + 1)]
            for curve in curves_now
        ]

    assert answers == judged_by(pruner)
    assert any(any(a) for a in answers) and any(not all(a) for a in answers)  # both answers occur
    # The kinds answer differently on these curves, so a study judged by the wrong kind fails.
    others = [judge for name, (_, judge) in JUDGES.items() if name != kind]
    assert all(judged_by(other) != answers for other in others)


def _kept_bests(conn: Any, trial_ids: Any) -> dict[int, tuple[Any, ...]]:
    """The hpo_curve_bests rows of these trials (other tests share the database)."""
    from sqlalchemy import text

    query = text("SELECT trial_id, finite_min, finite_max, inf_pos, inf_neg FROM hpo_curve_bests WHERE trial_id = ANY(:ids)")
    return {row[0]: tuple(row[1:]) for row in conn.execute(query, {"ids": list(trial_ids)})}


@pytest.mark.parametrize("rewrite", [False, True], ids=["kept", "rewritten"])
@pytest.mark.parametrize("seed", range(3))
def test_the_database_summarizes_curves_as_curve_summary_does(db_url: str, settings: Settings, seed: int, rewrite: bool) -> None:
    """optuna_rows.insert_values_and_summarize against CurveSummary.of on stored curves with
    NaN, infinities, gaps and none at all; a step already there keeps its first value.

    The best values come from hpo_curve_bests, kept by triggers on Optuna's table (migration
    0006). "rewritten": Optuna then rewrites a step of some curves (a step reported again
    through its storage updates the row), which drops their kept row; the batch aggregates
    those curves from Optuna's table, and its insert builds the row again."""
    import math

    from service.engine.optuna_adapter import rows as optuna_rows
    from service.engine.pruning import CurveSummary

    rng = random.Random(seed)
    storage = make_storage(db_url, settings)
    study = optuna.create_study(storage=storage)
    stored: dict[int, dict[int, float]] = {}

    def some_value() -> float:
        return rng.choice([math.nan, math.inf, -math.inf]) if rng.random() < 0.25 else rng.uniform(-2, 2)

    for _ in range(12):
        trial_id = study.ask()._trial_id
        steps = rng.sample(range(0, 10), rng.randrange(0, 8))
        stored[trial_id] = {s: some_value() for s in steps}
        for step, value in stored[trial_id].items():
            storage.set_trial_intermediate_value(trial_id, step, value)
    rewritten = set()
    if rewrite:
        for trial_id, curve in stored.items():
            if curve and rng.random() < 0.6:
                step = rng.choice(list(curve))
                curve[step] = some_value()
                storage.set_trial_intermediate_value(trial_id, step, curve[step])
                rewritten.add(trial_id)
        assert rewritten
    finished = study.ask()._trial_id
    storage.set_trial_state_values(finished, TrialState.FAIL)
    reports = [(trial_id, rng.randrange(0, 12), rng.uniform(-3, 3)) for trial_id in stored] + [(finished, 1, 0.5), (2**31 - 1, 1, 0.5)]
    engine = make_engine(db_url, settings)
    with engine.begin() as conn:
        kept_before = _kept_bests(conn, stored)
        found = optuna_rows.insert_values_and_summarize(conn, reports)
        kept_after = _kept_bests(conn, stored)
    assert {t for t, curve in stored.items() if curve} - rewritten == kept_before.keys()
    for trial_id, step, value in reports[:-2]:
        got, want = found[trial_id], CurveSummary.of(stored[trial_id])
        assert got.state == TrialState.RUNNING and got.had_step == (step in stored[trial_id])
        assert (got.last_step, got.previous_step) == (want.last_step, want.previous_step)
        for a, b in ((got.best_min, want.best_min), (got.best_max, want.best_max)):
            assert a == b or (math.isnan(a) and math.isnan(b)), (stored[trial_id], got)
        expected = {**{step: value}, **stored[trial_id]}  # the first value of a step stays
        actual = storage.get_trial(trial_id).intermediate_values
        assert actual.keys() == expected.keys() and all(
            actual[s] == expected[s] or (math.isnan(actual[s]) and math.isnan(expected[s])) for s in expected
        )
        stored[trial_id] = expected
        # A curve that got a value has its row again; one whose step was there keeps what it had.
        assert (trial_id in kept_after) == (trial_id in kept_before or not got.had_step)
    assert found[finished].state == TrialState.FAIL and storage.get_trial(finished).intermediate_values == {}
    assert found[2**31 - 1].state is None

    # Read again (every step already there, so nothing is inserted): now from the rows that the
    # batch's inserts built or updated, or aggregated where a rewrite left none.
    again = [(trial_id, next(iter(curve)), 0.0) for trial_id, curve in stored.items()]
    with engine.begin() as conn:
        found = optuna_rows.insert_values_and_summarize(conn, again)
    for trial_id, _, _ in again:
        got, want = found[trial_id], CurveSummary.of(stored[trial_id])
        assert got.had_step and (got.last_step, got.previous_step) == (want.last_step, want.previous_step)
        for a, b in ((got.best_min, want.best_min), (got.best_max, want.best_max)):
            assert a == b or (math.isnan(a) and math.isnan(b)), (stored[trial_id], got)

    # Deleting the study deletes its values, and with them their rows.
    optuna.delete_study(study_name=study.study_name, storage=storage)
    with engine.begin() as conn:
        assert _kept_bests(conn, stored) == {}
    engine.dispose()


def test_the_batches_in_flight_come_from_the_settings(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"report_batches": 3}))
    with TestClient(app):
        batcher = app.state.reports
        assert batcher.in_flight == 3 and batcher._executor._max_workers == 3 and batcher._engine.pool.size() == 3
