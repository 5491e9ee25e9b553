"""The worker's side of "nothing lost", without a server: reports queued through an outage and
delivered in order, a lost lease abandoning the trial, a retried trial resuming from its
checkpoint, and the client's retries (Retry-After, bounded by the lease). The real-server tests
(resume after SIGKILL, database outages) live with the service's tests."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import worker.runner
import worker.trainer
from service.spec import MLP_PARAMS, Assignment
from worker.client import LeaseLost, ServiceClient, ProtocolError
from worker.outbox import Outbox
from worker.runner import Runner
from worker.settings import WorkerSettings
from worker.trainer import EpochResult, train

HP = dict({name: rule.default for name, rule in MLP_PARAMS.items()}, optimizer="adam", lr=3e-3, batch_size=64, hidden_size=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assignment(trial_id: int = 1, number: int = 0, *, workload: dict[str, Any] | None = None, **extra: Any) -> Assignment:
    return Assignment.model_validate(
        {
            "trial_id": trial_id,
            "lease_id": f"lease-{trial_id}",
            "study": "s",
            "number": number,
            "params": {"lr": HP["lr"], "batch_size": HP["batch_size"], "hidden_size": HP["hidden_size"]},
            "workload": {"model": "mlp", "epochs": 5, "seed": 1, "optimizer": "adam", **(workload or {})},
            "lease_seconds": 0.2,  # how long the end of a trial waits for an outage to pass (x finish_leases)
            "heartbeat_seconds": 60,
            **extra,
        }
    )


class Down(httpx.ConnectError):
    def __init__(self) -> None:
        super().__init__("connection refused")


class FakeClient:
    """ServiceClient's trial calls, recorded. `down(kind, step)` says whether a call fails as if
    the service were unreachable; `lost_at` makes the report of that step answer 409 (or
    `lost_status`)."""

    def __init__(self, assignments: list[Assignment], *, checkpoint: tuple[int, bytes] | None = None) -> None:
        self.assignments = list(assignments)
        self.claims = 0
        self.attempts: list[tuple[str, int]] = []  # (kind, step) of every report/checkpoint call
        self.delivered: list[tuple[int, int, float, bool]] = []  # (trial_id, step, value, with checkpoint bytes)
        self.checkpoint_bytes: dict[int, bytes] = {}
        self.finished: list[tuple[int, str, float | None, str | None]] = []
        self.finish_attempts = 0
        self.stored = checkpoint
        self.fetches = 0
        self.heartbeats = 0
        self.down: Any = lambda kind, step: False
        self.lost_at: int | None = None
        self.lost_status = 409
        self.heartbeat_error: Exception | None = None
        self.events: list[tuple[str, int]] | None = None

    def claim(self, worker_id: str, studies: list[str] | None = None) -> Assignment | None:
        self.claims += 1
        return self.assignments.pop(0) if self.assignments else None

    def _call(self, kind: str, a: Assignment, step: int, value: float, data: bytes | None) -> bool:
        self.attempts.append((kind, step))
        if self.lost_at is not None and step >= self.lost_at:
            raise LeaseLost(self.lost_status, "lease lost")
        if self.down(kind, step):
            if self.events is not None:
                self.events.append(("failed", step))
            raise Down()
        self.delivered.append((a.trial_id, step, value, data is not None))
        if data is not None:
            self.checkpoint_bytes[step] = data
        if self.events is not None:
            self.events.append(("delivered", step))
        return False

    def report(self, a: Assignment, step: int, value: float, *, retry_for: float | None = None) -> bool:
        return self._call("report", a, step, value, None)

    def checkpoint(self, a: Assignment, step: int, value: float, data: bytes, *, retry_for: float | None = None) -> bool:
        return self._call("checkpoint", a, step, value, data)

    def fetch_checkpoint(self, a: Assignment, *, retry_for: float | None = None) -> tuple[int, bytes] | None:
        self.fetches += 1
        return self.stored

    def heartbeat(self, a: Assignment, *, retry_for: float | None = None) -> None:
        self.heartbeats += 1
        if self.heartbeat_error is not None:
            raise self.heartbeat_error

    def finish(self, a: Assignment, state: str, value: float | None = None, error: str | None = None,
               reason: str | None = None, metrics: dict[str, float] | None = None, *, retry_for: float | None = None) -> None:
        self.finish_attempts += 1
        if self.down("finish", -1):
            raise Down()
        self.finished.append((a.trial_id, state, value, reason))


class Scripted:
    """A trainer double: fixed losses, each epoch logged in `events` as it is produced, and
    checkpoint bytes naming their epoch."""

    def __init__(self, losses: list[float], events: list[tuple[str, int]]) -> None:
        self.losses = losses
        self.events = events
        self.epoch = 0
        self.closed = False
        self.resumed_from = None
        self.history: list[EpochResult] = []

    def __iter__(self) -> Iterator[EpochResult]:
        try:
            for epoch, loss in enumerate(self.losses, 1):
                self.epoch = epoch
                self.events.append(("epoch", epoch))
                yield EpochResult(epoch, loss, loss, None, 0.1)
        finally:
            self.closed = True

    def close(self) -> None:
        self.closed = True

    def checkpoint(self) -> bytes:
        return f"checkpoint of epoch {self.epoch}".encode()


LOSSES = [1.0, 0.8, 0.7, 0.75, 0.6]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Scripted], list[tuple[str, int]]]:
    made: list[Scripted] = []
    events: list[tuple[str, int]] = []

    def fake_train(workload: Any, hp: Any, device: Any, **kw: Any) -> Scripted:
        made.append(Scripted(LOSSES[: workload.epochs], events))
        return made[-1]

    monkeypatch.setattr(worker.trainer, "train", fake_train)
    return made, events


def runner_for(client: Any, **kw: Any) -> Runner:
    return Runner(client=client, worker_id="w1", device="cpu", retry_delay=0.001, **kw)


# ---------------------------------------------------------------- buffering through an outage


def test_reports_are_queued_through_an_outage_and_delivered_in_order(scripted: Any, tmp_path: Path) -> None:
    made, events = scripted
    client = FakeClient([assignment()])
    client.events = events
    # The service is away for the 2nd and 3rd calls: step 2's report, and its retry after epoch 3
    # (step 3 is queued behind it); it answers again after epoch 4.
    failing = iter(range(2))
    client.down = lambda kind, step: step in (2, 3) and next(failing, None) is not None
    acks = tmp_path / "acks.jsonl"
    runner = runner_for(client, ack_log=acks)
    assert runner.run(max_trials=1) == 1
    # Training went on through the outage: epochs 3 and 4 ran before step 2 got through, and
    # the queue went out oldest first, with its own step numbers.
    assert events == [
        ("epoch", 1), ("delivered", 1),
        ("epoch", 2), ("failed", 2),
        ("epoch", 3), ("failed", 2),
        ("epoch", 4), ("delivered", 2), ("delivered", 3), ("delivered", 4),
        ("epoch", 5), ("delivered", 5),
    ]  # fmt: skip
    # A newer checkpoint supersedes queued ones: their values still go, as plain reports.
    assert [(step, value, with_bytes) for _, step, value, with_bytes in client.delivered] == [
        (1, 1.0, True), (2, 0.8, False), (3, 0.7, False), (4, 0.75, True), (5, 0.6, True),
    ]  # fmt: skip
    assert client.checkpoint_bytes[4] == b"checkpoint of epoch 4"
    assert client.finished == [(1, "complete", 0.6, None)]
    # The ack log holds exactly the acknowledged reports, in order.
    lines = [json.loads(line) for line in acks.read_text().splitlines()]
    assert [(x["step"], x["value"]) for x in lines] == [(1, 1.0), (2, 0.8), (3, 0.7), (4, 0.75), (5, 0.6)]
    assert lines[0] == {"trial_id": 1, "number": 0, "study": "s", "step": 1, "value": 1.0, "worker_id": "w1"}


def test_the_finish_waits_for_the_queue_to_drain(scripted: Any) -> None:
    made, events = scripted
    client = FakeClient([assignment()])
    client.events = events
    # Away from step 4 on, for a few more attempts after the last epoch: only the end's drain
    # (with its backoff) gets steps 4 and 5 through, and only then is the trial finished.
    failing = iter(range(5))
    client.down = lambda kind, step: step >= 4 and next(failing, None) is not None
    assert runner_for(client).run(max_trials=1) == 1
    assert [step for _, step, _, _ in client.delivered] == [1, 2, 3, 4, 5]
    assert events[-9:] == [
        ("epoch", 4), ("failed", 4),
        ("epoch", 5), ("failed", 4),
        ("failed", 4), ("failed", 4), ("failed", 4),  # the drain, with backoff
        ("delivered", 4), ("delivered", 5),
    ]  # fmt: skip
    assert client.finished == [(1, "complete", 0.6, None)]


def test_an_outage_that_outlasts_the_patience_leaves_the_trial_unfinished(scripted: Any, caplog: Any) -> None:
    made, events = scripted
    client = FakeClient([assignment(), assignment(2, 1)])
    client.down = lambda kind, step: step >= 3 and len(client.finished) == 0 and client.claims == 1
    with caplog.at_level(logging.ERROR, logger="hpo.worker"):
        assert runner_for(client, finish_leases=1).run(max_trials=2) == 2
    # Not finished without its reports (its lease expires, and the service retries it); the
    # worker goes on with the next trial.
    assert [(trial, state) for trial, state, _, _ in client.finished] == [(2, "complete")]
    assert [step for trial, step, _, _ in client.delivered if trial == 1] == [1, 2]
    assert "reports could not be delivered" in caplog.text


def test_a_finish_that_fails_for_a_while_is_retried(scripted: Any) -> None:
    client = FakeClient([assignment()])
    failing = iter(range(3))
    client.down = lambda kind, step: kind == "finish" and next(failing, None) is not None
    runner_for(client).run(max_trials=1)
    assert client.finish_attempts == 4 and client.finished == [(1, "complete", 0.6, None)]


def test_failing_heartbeats_do_not_end_the_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    beats = threading.Event()
    client = FakeClient([assignment(heartbeat_seconds=0.01)])
    client.heartbeat_error = Down()
    real_heartbeat = client.heartbeat

    def heartbeat(a: Assignment, **kw: Any) -> None:
        if client.heartbeats >= 3:
            beats.set()
        real_heartbeat(a, **kw)

    client.heartbeat = heartbeat  # type: ignore[method-assign]

    def slow_train(workload: Any, hp: Any, device: Any, **kw: Any) -> Iterator[EpochResult]:
        for epoch in range(1, 4):
            if epoch == 2:
                assert beats.wait(30), "no heartbeats"  # a few failed beats happen mid-trial
            yield EpochResult(epoch, 1.0 / epoch, 1.0, None, 0.1)

    monkeypatch.setattr(worker.trainer, "train", slow_train)
    runner_for(client).run(max_trials=1)
    assert client.heartbeats >= 3
    assert client.finished == [(1, "complete", 1 / 3, None)]


def test_sigterm_during_an_outage_drains_then_finishes_interrupted(scripted: Any) -> None:
    made, events = scripted
    client = FakeClient([assignment()])
    runner = runner_for(client)
    failing = iter(range(2))

    def down(kind: str, step: int) -> bool:
        if step == 2:
            runner.stop.set()  # the signal arrives while step 2 is being reported
        return step == 2 and next(failing, None) is not None

    client.down = down
    assert runner.run() == 1
    assert [step for _, step, _, _ in client.delivered] == [1, 2]
    assert client.finished == [(1, "failed", 0.8, "interrupted")]
    assert made[0].closed


# ---------------------------------------------------------------- a lost lease


@pytest.mark.parametrize("status", [409, 410])
def test_a_lost_lease_abandons_the_trial_and_the_worker_claims_again(
    scripted: Any, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    made, events = scripted
    released: list[str] = []
    monkeypatch.setattr(worker.runner, "release_device_memory", released.append)
    client = FakeClient([assignment(1, 0), assignment(2, 1)])
    client.lost_status = status
    real_call = client._call

    def call(kind: str, a: Assignment, step: int, value: float, data: bytes | None) -> bool:
        client.lost_at = 3 if a.trial_id == 1 else None
        return real_call(kind, a, step, value, data)

    client._call = call  # type: ignore[method-assign]
    assert runner_for(client).run(max_trials=2) == 2
    # Trial 1 is left alone (no finish: it is someone else's now), its trainer stopped at the
    # epoch that found out, its memory released; the next claim got trial 2, which completed.
    assert client.claims == 2
    assert client.finished == [(2, "complete", 0.6, None)]
    assert [step for trial, step, _, _ in client.delivered if trial == 1] == [1, 2]
    assert made[0].closed and [e for e in events[:4]] == [("epoch", 1), ("epoch", 2), ("epoch", 3), ("epoch", 1)]
    assert released == ["cpu"]


def test_a_lease_lost_while_draining_abandons_the_trial(scripted: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.runner, "release_device_memory", lambda device: None)
    client = FakeClient([assignment()])
    real_call = client._call
    tries = []

    def call(kind: str, a: Assignment, step: int, value: float, data: bytes | None) -> bool:
        if step < 4:
            return real_call(kind, a, step, value, data)
        # Away from step 4 on; when it answers again (in the drain), the lease has expired.
        tries.append(step)
        if len(tries) >= 3:
            raise LeaseLost(409, "lease expired")
        raise Down()

    client._call = call  # type: ignore[method-assign]
    outcome = runner_for(client).run_trial(client.assignments.pop())
    assert outcome.state is None and "lease lost" in (outcome.error or "")
    assert client.finished == [] and tries == [4, 4, 4]


def test_a_heartbeat_that_finds_the_lease_lost_stops_the_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.runner, "release_device_memory", lambda device: None)
    client = FakeClient([assignment(heartbeat_seconds=0.01)])
    client.heartbeat_error = LeaseLost(409, "lease expired")
    seen = []

    def train_until_lost(workload: Any, hp: Any, device: Any, **kw: Any) -> Iterator[EpochResult]:
        for epoch in range(1, 1000):
            seen.append(epoch)
            pause = threading.Event()
            if epoch == 2:
                # Until the heartbeat thread has beaten (and found the lease gone).
                for _ in range(3000):
                    if client.heartbeats:
                        break
                    pause.wait(0.01)
            pause.wait(0.01)
            yield EpochResult(epoch, 1.0, 1.0, None, 0.1)

    monkeypatch.setattr(worker.trainer, "train", train_until_lost)
    outcome = runner_for(client).run_trial(client.assignments.pop())
    assert outcome.state is None and client.finished == [] and len(seen) < 1000


# ---------------------------------------------------------------- resuming a retried trial

WORKLOAD = {"model": "mlp", "epochs": 5, "seed": 1, "dropout": 0.3, "optimizer": "adam", "schedule": "cosine"}


@pytest.fixture(scope="module")
def uninterrupted() -> list[EpochResult]:
    a = assignment(workload=WORKLOAD)
    return list(train(a.workload, a.hyperparameters(), "cpu"))


def checkpoint_after(epochs: int) -> bytes:
    """What an earlier attempt of the trial uploaded after `epochs` epochs before it died."""
    a = assignment(workload=WORKLOAD)
    run = train(a.workload, a.hyperparameters(), "cpu")
    for _ in range(epochs):
        next(run)
    data = run.checkpoint()
    run.close()
    return data


def test_a_retried_trial_resumes_after_its_checkpoint(uninterrupted: list[EpochResult], caplog: Any) -> None:
    client = FakeClient([], checkpoint=(2, checkpoint_after(2)))
    a = assignment(7, 12, workload=WORKLOAD, attempt=2, retry_of=9, resume_step=2)
    with caplog.at_level(logging.INFO, logger="hpo.worker"):
        outcome = runner_for(client).run_trial(a)
    assert "resumed trial #12 (attempt 2, retry of #9) from step 2" in caplog.text
    assert client.fetches == 1
    # The first new report is at resume_step + 1, and the values are the uninterrupted run's.
    assert [(step, value) for _, step, value, _ in client.delivered] == [(r.epoch, r.val_loss) for r in uninterrupted[2:]]
    assert all(with_bytes for *_, with_bytes in client.delivered)
    # The epochs before the checkpoint count: the best of all five, and five epochs.
    best = min(r.val_loss for r in uninterrupted)
    assert outcome.state == "complete" and outcome.value == best and outcome.epochs == 5
    assert client.finished == [(7, "complete", best, None)]
    assert outcome.metrics["initial_val_loss"] == uninterrupted[0].initial_val_loss


def test_the_epochs_before_the_checkpoint_count_towards_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    resumes = []

    class Resumed:
        """A trainer double resumed after epoch 2, whose best epochs came before that."""

        resumed_from = 2
        history = [EpochResult(1, 0.5, 0.6, 0.9, 0.1), EpochResult(2, 0.6, 0.5, 0.8, 0.1)]

        def __iter__(self) -> Iterator[EpochResult]:
            yield EpochResult(3, 0.7, 0.4, 0.85, 0.05)
            yield EpochResult(4, 0.65, 0.3, 0.7, 0.05)

        def checkpoint(self) -> bytes:
            return b"later"

    def resumed_train(workload: Any, hp: Any, device: Any, *, resume: bytes | None = None, **kw: Any) -> Resumed:
        resumes.append(resume)
        return Resumed()

    monkeypatch.setattr(worker.trainer, "train", resumed_train)
    client = FakeClient([], checkpoint=(2, b"saved"))
    outcome = runner_for(client).run_trial(assignment(workload={"epochs": 4}, attempt=2, retry_of=0, resume_step=2))
    assert resumes == [b"saved"]
    assert [step for _, step, _, _ in client.delivered] == [3, 4]
    # The best value and accuracy over all four epochs, two of them before the checkpoint.
    assert outcome.value == 0.5 and outcome.epochs == 4
    assert outcome.metrics["val_accuracy"] == 0.9 and outcome.metrics["epochs"] == 4


def test_without_a_checkpoint_a_retried_trial_starts_over(uninterrupted: list[EpochResult]) -> None:
    client = FakeClient([], checkpoint=None)  # the service answers 204
    a = assignment(workload=WORKLOAD, attempt=2, retry_of=0, resume_step=2)
    runner_for(client).run_trial(a)
    assert client.fetches == 1
    assert [(step, value) for _, step, value, _ in client.delivered] == [(r.epoch, r.val_loss) for r in uninterrupted]


def test_a_checkpoint_that_cannot_be_resumed_means_starting_over(uninterrupted: list[EpochResult], caplog: Any) -> None:
    other = assignment(workload=dict(WORKLOAD, seed=2))
    run = train(other.workload, other.hyperparameters(), "cpu")
    next(run)
    for stored in (b"not a checkpoint", run.checkpoint()):
        client = FakeClient([], checkpoint=(1, stored))
        with caplog.at_level(logging.WARNING, logger="hpo.worker"):
            runner_for(client).run_trial(assignment(workload=WORKLOAD, attempt=2, retry_of=0, resume_step=1))
        assert [step for _, step, _, _ in client.delivered] == [1, 2, 3, 4, 5]
        assert client.delivered[-1][2] == uninterrupted[-1].val_loss
    assert caplog.text.count("training from scratch") == 2


def test_an_original_trial_fetches_nothing_and_checkpoints_only_when_asked() -> None:
    client = FakeClient([])
    runner_for(client).run_trial(assignment(workload=dict(WORKLOAD, epochs=2, checkpoint=False)))
    assert client.fetches == 0
    assert client.attempts == [("report", 1), ("report", 2)]
    client = FakeClient([])
    runner_for(client).run_trial(assignment(workload=dict(WORKLOAD, epochs=2)))
    assert client.attempts == [("checkpoint", 1), ("checkpoint", 2)]
    # What was uploaded resumes: the bytes are a real checkpoint of that epoch.
    a = assignment(workload=dict(WORKLOAD, epochs=2))
    (second,) = train(a.workload, a.hyperparameters(), "cpu", resume=client.checkpoint_bytes[1])
    assert (second.epoch, second.val_loss) == client.delivered[1][1:3]


# ---------------------------------------------------------------- the outbox on its own


def test_a_refused_checkpoint_is_sent_as_a_report_and_checkpoints_stop() -> None:
    client = FakeClient([])
    real = client.checkpoint

    def too_large(a: Assignment, step: int, value: float, data: bytes, **kw: Any) -> bool:
        client.attempts.append(("checkpoint", step))
        raise ProtocolError(413, "checkpoint too large")

    client.checkpoint = too_large  # type: ignore[method-assign]
    outbox = Outbox(client, assignment())
    assert outbox.send(1, 0.5, b"big") is False
    outbox.send(2, 0.4, b"big")
    assert [(step, with_bytes) for _, step, _, with_bytes in client.delivered] == [(1, False), (2, False)]
    assert client.attempts == [("checkpoint", 1), ("report", 1), ("report", 2)] and not outbox.checkpoints
    del real


def test_a_report_the_service_refuses_for_good_is_dropped_not_retried_forever() -> None:
    client = FakeClient([])
    real = client.report

    def report(a: Assignment, step: int, value: float, **kw: Any) -> bool:
        if step == 1:
            raise ProtocolError(422, "value: not a number")
        return real(a, step, value, **kw)

    client.report = report  # type: ignore[method-assign]
    outbox = Outbox(client, assignment())
    outbox.send(1, 0.5)
    outbox.send(2, 0.4)
    assert [step for _, step, _, _ in client.delivered] == [2] and outbox.dropped == 1 and outbox.pending == 0


def test_the_prune_answer_is_the_latest_delivered_reports() -> None:
    client = FakeClient([])
    answers = {1: False, 2: True, 3: False}
    failing = iter(range(1))
    client.down = lambda kind, step: step == 2 and next(failing, None) is not None
    real = client._call
    client._call = lambda kind, a, step, value, data: real(kind, a, step, value, data) or answers[step]  # type: ignore[method-assign]
    outbox = Outbox(client, assignment())
    assert outbox.send(1, 1.0) is False
    assert outbox.send(2, 1.0) is False  # queued: nothing delivered, nothing to stop for
    # Step 2's (prune) and step 3's (go on) answers arrive together: step 3's is the latest.
    assert outbox.send(3, 1.0) is False
    answers[4] = True
    assert outbox.send(4, 1.0) is True


def test_a_user_workloads_reports_are_queued_too() -> None:
    from worker.workloads.sdk_relay import _Relay

    client = FakeClient([])
    failing = iter(range(1))
    client.down = lambda kind, step: step == 2 and next(failing, None) is not None
    relay = _Relay(assignment(workload={"model": "command", "command": "x.py"}), client, threading.Event())  # type: ignore[arg-type]
    for step in (1, 2, 3):
        assert relay.handle(json.dumps({"op": "report", "step": step, "value": 1.0 / step}).encode()) == {"prune": False}
    assert [step for _, step, _, _ in client.delivered] == [1, 2, 3] and relay.reports == 3


def test_the_ack_log_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HPO_ACK_LOG", str(tmp_path / "acks.jsonl"))
    assert WorkerSettings().ack_log == tmp_path / "acks.jsonl"


# ---------------------------------------------------------------- the client's retries


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client_with(handler: Any) -> tuple[ServiceClient, Clock]:
    client = ServiceClient("http://service", "token", transport=httpx.MockTransport(handler))
    clock = Clock()
    client.clock, client.sleep = clock, clock.sleep
    return client, clock


def test_the_client_waits_as_long_as_retry_after_asks() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return httpx.Response(503, headers={"Retry-After": "3"}, json={"error": "unavailable", "detail": "db"})
        return httpx.Response(200, json={"prune": True})

    client, clock = client_with(handler)
    assert client.report(assignment(lease_seconds=60), 4, 0.5) is True
    assert len(seen) == 3 and len(clock.sleeps) == 2
    assert all(3.0 <= s <= 3.75 for s in clock.sleeps)  # at least what was asked, a little jitter


@pytest.mark.parametrize("failure", ["503", "connect"])
def test_the_client_retries_for_the_lease_then_raises(failure: str) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if failure == "connect":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "unavailable", "detail": "db down"})

    client, clock = client_with(handler)
    with pytest.raises(ProtocolError if failure == "503" else httpx.ConnectError) as caught:
        client.report(assignment(lease_seconds=20), 1, 0.5)
    if failure == "503":
        assert caught.value.status == 503
    # Retried until the lease's length had passed, with one last try at its end, and no longer.
    assert clock.now == pytest.approx(20.0) and len(calls) >= 6
    # retry_for=0: a single try.
    calls.clear()
    with pytest.raises(ProtocolError if failure == "503" else httpx.ConnectError):
        client.report(assignment(lease_seconds=20), 1, 0.5, retry_for=0)
    assert len(calls) == 1


def test_the_client_speaks_the_checkpoint_calls() -> None:
    seen: list[httpx.Request] = []
    stored = b"\x00checkpoint\xff"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"prune": False})
        if request.headers["X-HPO-Lease"] == "lease-1":
            return httpx.Response(200, content=stored, headers={"X-HPO-Step": "3"})
        if request.headers["X-HPO-Lease"] == "lease-2":
            return httpx.Response(204)
        return httpx.Response(410, json={"error": "gone", "detail": "study deleted"})

    client, _ = client_with(handler)
    assert client.checkpoint(assignment(), 3, 0.1 + 0.2, stored) is False
    post = seen[0]
    assert post.url.path == "/api/v1/trials/1/checkpoint" and post.content == stored
    assert post.headers["Content-Type"] == "application/octet-stream"
    # The lease in a header, out of the query string (and so out of access logs).
    assert dict(post.url.params) == {"step": "3", "value": repr(0.1 + 0.2)} and post.headers["X-HPO-Lease"] == "lease-1"
    assert float(post.url.params["value"]) == 0.1 + 0.2  # exactly the reported float
    assert client.fetch_checkpoint(assignment()) == (3, stored)
    assert client.fetch_checkpoint(assignment(2)) is None
    with pytest.raises(LeaseLost):
        client.fetch_checkpoint(assignment(3))
