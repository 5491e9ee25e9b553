"""Faults with real processes: PostgreSQL stopped and started under a running study, the API
SIGKILLed and restarted, a study stopped mid-run, two API processes sharing one budget, and a
worker fenced off after its lease went stale.

Everything here runs on a dedicated PostgreSQL cluster (tests/pg_cluster.py) on its own port,
never on the shared server, because these tests stop it. The API is a real `hpo serve` with its
access log on (bench/chaos.py's ApiServer), so every test can also check that nobody got a 5xx
other than 503. No assertion is about wall-clock time; the waits are generous deadlines."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.chaos import (
    ApiServer,
    analyse,
    chaos_definition,
    kill_group,
    lineage_root,
    missing_acked_reports,
    open_storage,
    read_acks,
    scan_api_logs,
    server_env,
    start_worker,
    terminate,
)
from service.settings import Settings
from tests.conftest import auth, wait_for
from tests.pg_cluster import PgCluster

LEASE = 6.0
REAPER = 1.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    pg = PgCluster()
    pg.start()
    yield pg
    pg.cleanup()


@pytest.fixture(scope="module")
def fault_db(cluster: PgCluster) -> str:
    from service.migrate import migrate

    url = cluster.create_database("faults")
    migrate(url, Settings(database_url=url))
    return url


def team_token(url: str, team: str) -> str:
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import create_token, ensure_team

    engine = make_engine(url, Settings(database_url=url), application_name="hpo-fault-tests")
    try:
        with make_sessionmaker(engine).begin() as session:
            return create_token(session, ensure_team(session, team))
    finally:
        engine.dispose()


@pytest.fixture
def token(fault_db: str, team: str) -> str:
    return team_token(fault_db, team)


class Rig:
    """API servers and workers of one test; all of them are killed when the test ends."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.apis: list[ApiServer] = []
        self.workers: dict[str, Any] = {}
        self.storage = open_storage(url)

    def api(self, lease: float = LEASE, reaper: float = REAPER, heartbeat: float = 1.0) -> ApiServer:
        env = server_env(self.url, lease_seconds=lease, heartbeat_seconds=heartbeat, reaper_seconds=reaper)
        server = ApiServer(env, self.tmp / "logs", name=f"api{len(self.apis)}")
        self.apis.append(server)
        server.start()
        return server

    def worker(self, api: ApiServer, token: str, worker_id: str, *args: str) -> Any:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")} | {"PYTHONUNBUFFERED": "1"}
        process = start_worker(api.url, token, worker_id, env, self.tmp / "logs", self.ack_path(worker_id), *args)
        self.workers[worker_id] = process
        return process

    def ack_path(self, worker_id: str) -> Path:
        return self.tmp / "acks" / f"{worker_id}.jsonl"

    def acks(self) -> list[dict[str, Any]]:
        return read_acks(sorted((self.tmp / "acks").glob("*.jsonl")))

    def study_id(self, team: str, name: str) -> int:
        return self.storage.get_study_id_from_name(f"{team}/{name}")

    def trials(self, team: str, name: str) -> list[Any]:
        return self.storage.get_all_trials(self.study_id(team, name), deepcopy=False)

    def stop_workers(self) -> dict[str, int | None]:
        return {wid: terminate(p, timeout=60) for wid, p in self.workers.items()}

    def log_tail(self, name: str, n: int = 30) -> str:
        from bench.chaos import tail

        return tail(self.tmp / "logs" / f"{name}.log", n)

    def close(self) -> None:
        for p in self.workers.values():
            kill_group(p)
        for api in self.apis:
            api.stop()
        self.storage.engine.dispose()


@pytest.fixture
def rig(fault_db: str, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(fault_db, tmp_path)
    yield r
    r.close()


def slow_definition(name: str, *, n_trials: int, epochs: int, max_concurrent: int = 2, **budget: Any) -> dict[str, Any]:
    """Epochs of a few tenths of a second: the trials are mid-training when the test strikes.
    (About 0.2 s here with the trainer's hand-written MLP step, at 3200 batches of 4; an epoch
    much shorter than that lets a 300-epoch trial end before the stop test stops it.)"""
    definition = chaos_definition(name, n_trials, max_concurrent, epochs, max_retries=budget.pop("max_retries", 3))
    definition["workload"].update(
        dataset={"kind": "synthetic", "n_samples": 16000, "n_features": 16, "n_classes": 2}, batch_size=4, hidden_size=32
    )
    definition["budget"].update(budget)
    return definition


def wait_until_done(rig: Rig, team: str, name: str, n_trials: int, timeout: float = 300) -> Any:
    """Every lineage ended and nothing runs or waits; answers the analysis."""

    def done() -> Any:
        try:
            a = analyse(rig.trials(team, name))
        except Exception:
            return None
        quiet = a.counts["RUNNING"] == 0 and a.counts["WAITING"] == 0
        return a if a.lineages >= n_trials and a.finished_lineages == a.lineages and quiet else None

    wait_for(done, timeout, f"study {name} did not finish")
    time.sleep(1.0)
    return done()


def wait_for_acks(rig: Rig, n: int, timeout: float = 120) -> None:
    wait_for(lambda: len(rig.acks()) >= n, timeout, f"fewer than {n} acknowledged reports (HPO_ACK_LOG) in {timeout}s")


def assert_no_server_errors(rig: Rig) -> None:
    scan = scan_api_logs(p for api in rig.apis for p in api.log_files)
    assert scan.errors_5xx == 0 and scan.tracebacks == 0, scan.examples


def assert_acks_stored(rig: Rig) -> None:
    acks = rig.acks()
    assert acks, "the workers acknowledged no report (HPO_ACK_LOG)"
    missing = missing_acked_reports(rig.storage, acks)
    assert missing == [], missing[:5]


def test_postgres_restart_mid_study(rig: Rig, token: str, team: str, cluster: PgCluster) -> None:
    # Down longer than a worker retries one call (10 s), so reports queue up in the worker, and
    # shorter than a lease, so no trial is lost for it.
    api = rig.api(lease=30.0)
    n = 6
    with api.client(token) as c:
        assert c.post("/api/v1/studies", json=slow_definition("pgdown", n_trials=n, epochs=10)).status_code == 201
        for i in range(2):
            rig.worker(api, token, f"pg-{i}")
        wait_for_acks(rig, 2)
        cluster.stop()
        try:
            outage_started = time.monotonic()
            during = c.get("/api/v1/studies/pgdown")
            ready = httpx.get(f"{api.url}/readyz", timeout=30)
            healthy = httpx.get(f"{api.url}/healthz", timeout=30)
            # Keep it down a while, so the workers meet the outage mid-trial.
            time.sleep(max(0.0, 14.0 - (time.monotonic() - outage_started)))
        finally:
            cluster.start()
        assert during.status_code == 503, (during.status_code, during.text)
        assert "retry-after" in during.headers, dict(during.headers)
        assert int(during.headers["retry-after"]) >= 1
        assert during.json().get("error"), during.text
        assert ready.status_code == 503, (ready.status_code, ready.text)
        assert healthy.status_code == 200

        a = wait_until_done(rig, team, "pgdown", n)
        wait_for(lambda: httpx.get(f"{api.url}/readyz", timeout=10).status_code == 200, 30, "/readyz never recovered")
    assert a.lineages == n and a.duplicate_numbers == 0
    assert rig.stop_workers() == {"pg-0": 0, "pg-1": 0}
    assert_acks_stored(rig)
    assert_no_server_errors(rig)


def test_api_killed_and_restarted_mid_study(rig: Rig, token: str, team: str) -> None:
    api = rig.api()
    n = 8
    with api.client(token) as c:
        assert c.post("/api/v1/studies", json=slow_definition("apidown", n_trials=n, epochs=8)).status_code == 201
    for i in range(2):
        rig.worker(api, token, f"api-{i}")
    wait_for_acks(rig, 2)
    acks_before = len(rig.acks())
    api.kill()
    time.sleep(2.0)
    api.start()  # the same port: the workers' retries find it again
    a = wait_until_done(rig, team, "apidown", n)
    assert a.lineages == n and a.duplicate_numbers == 0
    assert len(rig.acks()) > acks_before  # work went on after the restart
    assert rig.stop_workers() == {"api-0": 0, "api-1": 0}
    assert_acks_stored(rig)
    assert_no_server_errors(rig)


def test_stopping_a_study_ends_its_trials_within_an_epoch(rig: Rig, token: str, team: str) -> None:
    api = rig.api()
    long = slow_definition("longrun", n_trials=4, epochs=300, max_concurrent=2)
    long["pruner"] = {"kind": "none"}
    with api.client(token) as c:
        assert c.post("/api/v1/studies", json=long).status_code == 201
        for i in range(2):
            rig.worker(api, token, f"stop-{i}")

        def both_training() -> bool:
            running = [t for t in rig.trials(team, "longrun") if t.state.name == "RUNNING"]
            return len(running) == 2 and all(len(t.intermediate_values) >= 2 for t in running)

        wait_for(both_training, 120, "two trials of the long study never got training")
        # Another study of the team waits for free workers.
        assert c.post("/api/v1/studies", json=chaos_definition("after", 4, 2, 3)).status_code == 201
        # Freeze the workers (SIGSTOP) and let their requests in flight land, so "the step at the
        # stop" is well defined: no report is racing the stop. Then stop the study and thaw them.
        for p in rig.workers.values():
            kill_group(p, signal.SIGSTOP)
        try:
            settled = None
            for _ in range(50):
                time.sleep(0.5)
                steps = {
                    t._trial_id: max(t.intermediate_values)
                    for t in rig.trials(team, "longrun")
                    if t.state.name == "RUNNING"
                }
                if steps == settled:
                    break
                settled = steps
            at_stop = settled
            assert c.post("/api/v1/studies/longrun/stop").status_code == 200
        finally:
            for p in rig.workers.values():
                kill_group(p, signal.SIGCONT)
        assert at_stop is not None and len(at_stop) == 2

        wait_for(
            lambda: all(t.state.name != "RUNNING" for t in rig.trials(team, "longrun")),
            60,
            "the stopped study's trials kept running",
        )
        trials = rig.trials(team, "longrun")
        for t in trials:
            if t._trial_id in at_stop:
                assert max(t.intermediate_values) <= at_stop[t._trial_id] + 1, (
                    t.number,
                    sorted(t.intermediate_values),
                    at_stop,
                )
        assert len(trials) == 2, "the stopped study handed out more trials"
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]

        a = wait_until_done(rig, team, "after", 4)
        assert a.lineages == 4
        workers = {t.user_attrs.get("worker_id") for t in rig.trials(team, "after")}
        assert workers <= {"stop-0", "stop-1"} and workers
        assert c.get("/api/v1/studies/longrun").json()["state"] == "stopped"
    assert rig.stop_workers() == {"stop-0": 0, "stop-1": 0}
    assert_no_server_errors(rig)


def test_two_api_processes_share_one_budget(rig: Rig, token: str, team: str) -> None:
    first, second = rig.api(), rig.api()
    n, limit = 30, 4
    with first.client(token) as c:
        assert c.post("/api/v1/studies", json=chaos_definition("shared", n, limit, 3, max_retries=2)).status_code == 201
    for i in range(6):
        rig.worker((first, second)[i % 2], token, f"two-{i}")
    study_id = rig.study_id(team, "shared")
    from optuna.trial import TrialState

    most = 0
    samples = 0
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        running = rig.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        most = max(most, len(running))
        samples += 1
        a = analyse(rig.trials(team, "shared"))
        if a.lineages >= n and a.finished_lineages == a.lineages and a.counts["RUNNING"] == a.counts["WAITING"] == 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the study did not finish: {dict(a.counts)}")
    assert most <= limit, f"{most} trials RUNNING at once, max_concurrent is {limit}"
    assert most >= 2, "never saw two trials at once: the test did not exercise the limit"
    a = analyse(rig.trials(team, "shared"))
    assert a.lineages <= n
    assert sum(a.ended_by_lineage[s] for s in ("COMPLETE", "PRUNED", "FAIL")) == n, dict(a.ended_by_lineage)
    assert a.duplicate_numbers == 0
    ids = {t.user_attrs.get("worker_id") for t in rig.trials(team, "shared")}
    assert any(w in ids for w in ("two-0", "two-2", "two-4")) and any(w in ids for w in ("two-1", "two-3", "two-5"))
    assert all(code == 0 for code in rig.stop_workers().values())
    assert_no_server_errors(rig)


def test_a_fenced_off_worker_gets_409_and_changes_nothing(rig: Rig, token: str, team: str) -> None:
    api = rig.api(lease=3.0, reaper=0.5)
    definition = chaos_definition("fence", 1, 1, 5, max_retries=1)
    definition["pruner"] = {"kind": "none"}
    with httpx.Client(base_url=api.url, headers=auth(token), timeout=30) as c:
        assert c.post("/api/v1/studies", json=definition).status_code == 201
        r = c.post("/api/v1/trials/claim", json={"worker_id": "worker-A", "studies": ["fence"]})
        assert r.status_code == 200, r.text
        a = r.json()
        assert a["attempt"] == 1 and a["retry_of"] is None
        assert (
            c.post(
                f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 1, "value": 0.5}
            ).status_code
            == 200
        )

        # Worker A goes silent: the reaper fails its trial and queues a retry.
        def retried() -> Any:
            trials = rig.trials(team, "fence")
            mine = next(t for t in trials if t._trial_id == a["trial_id"])
            retry = [t for t in trials if t._trial_id != a["trial_id"] and lineage_root(t) == a["number"]]
            return mine.state.name == "FAIL" and retry

        wait_for(retried, 60, "the silent worker's trial was not failed and retried")

        def stored(trial_id: int) -> tuple[str, dict[int, float], float | None]:
            t = rig.storage.get_trial(trial_id)
            return t.state.name, dict(t.intermediate_values), t.value

        before = stored(a["trial_id"])
        assert before == ("FAIL", {1: 0.5}, None)
        late = c.post(
            f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 2, "value": 0.4}
        )
        assert late.status_code == 409, late.text
        beat = c.post(f"/api/v1/trials/{a['trial_id']}/heartbeat", json={"lease_id": a["lease_id"]})
        assert beat.status_code == 409, beat.text
        end = c.post(
            f"/api/v1/trials/{a['trial_id']}/finish",
            json={"lease_id": a["lease_id"], "state": "complete", "value": 0.4},
        )
        assert end.status_code == 409, end.text
        assert stored(a["trial_id"]) == before

        # Another worker gets the retry; A's old lease still changes nothing, on either trial.
        r = c.post("/api/v1/trials/claim", json={"worker_id": "worker-B", "studies": ["fence"]})
        assert r.status_code == 200, r.text
        b = r.json()
        assert b["trial_id"] != a["trial_id"] and b["retry_of"] == a["number"] and b["attempt"] == 2
        b_before = stored(b["trial_id"])
        assert b_before[0] == "RUNNING"
        late = c.post(
            f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 3, "value": 0.3}
        )
        assert late.status_code == 409
        wrong = c.post(
            f"/api/v1/trials/{b['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 3, "value": 0.3}
        )
        assert wrong.status_code == 409
        end = c.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "failed"})
        assert end.status_code == 409
        assert stored(a["trial_id"]) == before
        assert stored(b["trial_id"]) == b_before

        # B's lease works.
        assert (
            c.post(
                f"/api/v1/trials/{b['trial_id']}/report", json={"lease_id": b["lease_id"], "step": 2, "value": 0.3}
            ).status_code
            == 200
        )
        assert (
            c.post(
                f"/api/v1/trials/{b['trial_id']}/finish",
                json={"lease_id": b["lease_id"], "state": "complete", "value": 0.3},
            ).status_code
            == 200
        )
        assert stored(b["trial_id"])[0] == "COMPLETE"
        assert stored(a["trial_id"]) == before
        listed = {t["number"]: t for t in c.get("/api/v1/studies/fence/trials").json()["trials"]}
        assert listed[a["number"]]["retry_of"] is None and listed[a["number"]]["attempt"] == 1
        assert listed[b["number"]]["retry_of"] == a["number"] and listed[b["number"]]["attempt"] == 2
        summary = c.get("/api/v1/studies/fence").json()
        assert summary["state"] == "finished", summary["state"]
    assert_no_server_errors(rig)
