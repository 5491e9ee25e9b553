"""Client.trial and Client.optimize: user code running trials over the worker protocol without
`hpo worker`, against a real `hpo serve`. The objectives compute a fake loss from the params (no
training): a plain process whose trials complete, prune and fail; a process SIGKILLed mid-trial,
whose trial the reaper fails and the service retries; the context manager's heartbeats, values
and ends in this process."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpo_client import Client, LeaseLost, NoTrialAvailable, TrialResult
from hpo_client.models import COMPLETE, FAIL, PRUNED, WAITING, Trial
from tests.conftest import LiveServer, digits_definition, wait_for
from tests.sdk_loop_process import fake_loss

SCRIPT = Path(__file__).with_name("sdk_loop_process.py")


class Recorder(httpx.HTTPTransport):
    """Remembers each call's last path segment (report, heartbeat, finish...) and its status."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.calls.append((request.url.path.rsplit("/", 1)[-1], response.status_code))
        return response

    def count(self, call: str, status: int | None = None) -> int:
        return sum(c == call and (status is None or s == status) for c, s in self.calls)


@pytest.fixture(scope="module")
def server(db_url: str) -> Iterator[LiveServer]:
    # Not the session's live_server: its 30 s lease would keep a killed process's trial running
    # for 30 s before the reaper fails it. Here a silent trial is reaped after about 4 s.
    live = LiveServer(db_url, HPO_LEASE_SECONDS="4", HPO_HEARTBEAT_SECONDS="1", HPO_REAPER_SECONDS="1")
    yield live
    live.stop()


@pytest.fixture
def admin_token(make_token: Any, team: str) -> str:
    return str(make_token(team))


@pytest.fixture
def admin(server: LiveServer, admin_token: str) -> Iterator[Client]:
    with Client(server.url, admin_token) as client:
        yield client


@pytest.fixture
def worker_token(make_token: Any, team: str) -> str:
    return str(make_token(team, "worker"))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def sdk(server: LiveServer, worker_token: str, recorder: Recorder) -> Iterator[Client]:
    with Client(server.url, worker_token, transport=recorder) as client:
        yield client


def submit(admin: Client, name: str, n_trials: int, **overrides: Any) -> None:
    budget = {"n_trials": n_trials, "max_concurrent": 1, "max_retries": 1}
    admin.submit(digits_definition(name, **{"pruner": {"kind": "none"}, "budget": budget, **overrides}))


def by_number(admin: Client, name: str) -> dict[int, Trial]:
    return {t.number: t for t in admin.trials(name)}


def start(server: LiveServer, token: str, study: str, mode: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(SCRIPT), server.url, token, study, mode]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- a plain process: complete, pruned, failed; killed, reaped, retried ----------------------


def test_optimize_in_a_plain_process(server: LiveServer, admin: Client, worker_token: str) -> None:
    submit(admin, "loop", 5)
    process = start(server, worker_token, "loop", "mixed")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    trials = by_number(admin, "loop")
    assert [trials[n].state for n in range(5)] == [COMPLETE, PRUNED, FAIL, COMPLETE, COMPLETE]
    loss = {n: fake_loss(t.params) for n, t in trials.items()}
    assert [trials[n].value for n in (0, 3, 4)] == [loss[0], loss[3] + 1 / 3, loss[4]]
    assert trials[1].value == loss[1] + 1 / 3  # a pruned trial keeps its last report
    assert trials[2].reason == "exception" and trials[2].error == "ValueError: trial 2 is bad on purpose"
    assert all(t.intermediate_values == {1: loss[n] + 1, 2: loss[n] + 0.5, 3: loss[n] + 1 / 3} for n, t in trials.items())
    assert {t.worker_id for t in trials.values()} == {f"sdk-{socket.gethostname()}-{process.pid}"}
    results = json.loads(out.splitlines()[-1])
    assert [(r["number"], r["state"], r["reason"]) for r in results] == [
        (0, COMPLETE, None), (1, PRUNED, None), (2, FAIL, "exception"), (3, COMPLETE, None), (4, COMPLETE, None)
    ]
    assert admin.study("loop").state == "finished"


def test_sigkill_mid_trial_is_reaped_and_retried(server: LiveServer, admin: Client, worker_token: str, sdk: Client) -> None:
    submit(admin, "crash", 1)
    process = start(server, worker_token, "crash", "hang")
    try:
        wait_for(lambda: any(t.intermediate_values for t in admin.trials("crash")), 30, "the process reported nothing")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    def retried() -> bool:
        trials = by_number(admin, "crash")
        # The reason comes with the lease's end, committed by the reaper just after Optuna's FAIL.
        reaped = (trials[0].state, trials[0].reason) == (FAIL, "lease_lost")
        return reaped and any(t.retry_of == 0 and t.state == WAITING for t in trials.values())

    wait_for(retried, 30, "the killed process's trial was not reaped and retried")
    dead = by_number(admin, "crash")[0]
    results = sdk.optimize("crash", lambda t: fake_loss(t.params) if t.attempt == 2 and t.retry_of == 0 else None)
    assert results == [TrialResult(1, COMPLETE, fake_loss(dead.params))]
    retry = by_number(admin, "crash")[1]
    assert (retry.state, retry.attempt, retry.params) == (COMPLETE, 2, dead.params)
    assert admin.study("crash").state == "finished"


# -- the context manager, in this process ------------------------------------------------------


def test_heartbeats_keep_a_quiet_trial(admin: Client, sdk: Client, recorder: Recorder) -> None:
    submit(admin, "quiet", 1)
    with sdk.trial("quiet", worker_id="notebook") as t:
        time.sleep(6)  # 1.5 leases without a report: only the heartbeats keep it
        t.complete(0.25)
    assert recorder.count("heartbeat", 200) >= 4 and recorder.count("finish", 200) == 1
    trial = by_number(admin, "quiet")[0]
    assert (trial.state, trial.value, trial.worker_id) == (COMPLETE, 0.25, "notebook")
    assert t.result == TrialResult(0, COMPLETE, 0.25)


def test_a_lost_lease_is_not_finished(server: LiveServer, admin: Client, admin_token: str, sdk: Client, recorder: Recorder) -> None:
    submit(admin, "taken", 1)
    with pytest.raises(LeaseLost), sdk.trial("taken") as t, server.client(admin_token) as other:
        # Someone else ends the trial under its lease: the next heartbeat gets 409.
        body = {"lease_id": t.assignment["lease_id"], "state": "failed", "error": "taken away"}
        other.post(f"/api/v1/trials/{t.trial_id}/finish", json=body).raise_for_status()
        wait_for(lambda: recorder.count("heartbeat", 409), 10, "no heartbeat noticed the lost lease")
        with pytest.raises(LeaseLost):
            t.report(0.5, 1)
        t.value = 0.5
    assert recorder.count("report") == 0 and recorder.count("finish") == 0
    assert t.result == TrialResult(0, FAIL, None, "lease_lost")
    assert by_number(admin, "taken")[0].error == "taken away"


@pytest.mark.parametrize(("direction", "best"), [("minimize", 0.2), ("maximize", 0.5)])
def test_values_at_the_end(admin: Client, sdk: Client, direction: str, best: float) -> None:
    submit(admin, "values", 3, direction=direction)
    for _ in range(3):
        with sdk.trial("values") as t:
            if t.number < 2:
                for step, value in enumerate([0.3, 0.5, 0.2], start=1):
                    assert t.report(value, step) is False
            if t.number == 1:
                t.value = 7.0
    trials = by_number(admin, "values")
    assert [(trials[n].state, trials[n].value) for n in range(3)] == [(COMPLETE, best), (COMPLETE, 7.0), (FAIL, None)]
    assert trials[2].reason == "no_value"
    with pytest.raises(NoTrialAvailable):
        sdk.trial("values")


def test_pruned_diverged_and_interrupted(admin: Client, sdk: Client) -> None:
    submit(admin, "ends", 3, pruner={"kind": "threshold", "upper": 1.0})
    with sdk.trial("ends") as t:
        assert t.report(5.0, 1) is True and t.should_prune()
        t.value = 0.1  # the pruner's word wins
    with sdk.trial("ends") as t:
        assert t.report(math.nan, 1) is True
    with pytest.raises(KeyboardInterrupt), sdk.trial("ends") as t:
        t.report(0.5, 1)
        raise KeyboardInterrupt
    trials = by_number(admin, "ends")
    assert [(trials[n].state, trials[n].reason) for n in range(3)] == [(PRUNED, None), (FAIL, "diverged"), (FAIL, "interrupted")]
    assert trials[0].value == 5.0 and trials[1].error == "reported nan at step 1"
    # An interrupted trial is the process's end, not the trial's: it runs again elsewhere.
    assert [(t.state, t.attempt, t.params) for t in trials.values() if t.retry_of == 2] == [(WAITING, 2, trials[2].params)]


def test_optimize_stops_and_propagates(admin: Client, sdk: Client) -> None:
    submit(admin, "loop2", 6)
    assert sdk.optimize("loop2", lambda t: time.sleep(1.0) or 1.0, timeout=0.5) == [TrialResult(0, COMPLETE, 1.0)]
    assert [r.number for r in sdk.optimize("loop2", lambda t: float(t.number), n_trials=2)] == [1, 2]

    def boom(t: Any) -> float:
        raise RuntimeError("boom " * 4000)  # over the finish's 10000 characters unless cut

    with pytest.raises(RuntimeError, match="boom"):
        sdk.optimize("loop2", boom, catch=(ValueError,))
    assert sdk.optimize("loop2", lambda t: 0.5) == [TrialResult(4, COMPLETE, 0.5), TrialResult(5, COMPLETE, 0.5)]
    trials = by_number(admin, "loop2")
    assert (trials[3].state, trials[3].reason, trials[3].error) == (FAIL, "exception", f"RuntimeError: {'boom ' * 4000}"[:2000])
    assert [trials[n].value for n in (0, 1, 2, 4, 5)] == [1.0, 1.0, 2.0, 0.5, 0.5]
    assert sdk.optimize("loop2", lambda t: 0.5) == []
