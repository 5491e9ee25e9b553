"""Run a study's trials from your own Python code (a notebook, a Slurm job) instead of `hpo
worker`, over the same worker protocol (claim, report, heartbeat, finish) and with a worker or
admin token.

    from hpo_client import Client, TrialPruned

    with Client("http://127.0.0.1:8000", "hpo_...") as hpo:
        with hpo.trial("my-study") as t:            # claims one trial, or NoTrialAvailable
            for epoch in range(1, 11):
                loss = train_one_epoch(t.params["lr"])
                if t.report(loss, epoch):           # the service's pruner says stop
                    raise TrialPruned()
        # or, shaped like Optuna's study.optimize:
        results = hpo.optimize("my-study", objective, n_trials=20, catch=(ValueError,))

How a `with client.trial(...)` block ends the trial:

- `raise TrialPruned()` (it does not leave the block), or leaving the block normally after the
  last report answered True (should_prune()): pruned. The pruner's word wins over a value set.
- any other exception: failed, reason `exception`, error "<Type>: <message>" (2000 characters at
  most); the exception goes on. KeyboardInterrupt or SystemExit: failed, reason `interrupted`,
  which the service retries elsewhere (budget.max_retries), like a worker shut down mid-trial.
- leaving normally: complete with the value set (`t.value = v`, `t.complete(v)`), else the best
  reported value (min, or max for a maximized study); failed with reason `no_value` when there is
  neither. A NaN or infinite value (reported or set) ends it failed with reason `diverged`.

A daemon thread heartbeats the lease every `heartbeat_seconds` of the assignment, so the trial
survives stretches without reports. Transient failures (no answer, 5xx, 408, 429) are retried for
up to a lease (a heartbeat for one interval), as `hpo worker` does. When the service answers that
the lease is lost (409: it expired and the reaper failed the trial, or it was finished elsewhere;
404/410: the study was deleted), nothing more is sent for the trial: later calls raise LeaseLost
and the block's end does not finish it (a normal end raises LeaseLost, as the result was not
recorded).
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo_client.errors import ConflictError, HpoError, NotFoundError
from hpo_client.models import COMPLETE, FAIL, PRUNED

if TYPE_CHECKING:
    from types import TracebackType

    from hpo_client.client import Client

log = logging.getLogger("hpo_client.trial")

ERROR_LIMIT = 2000
# Besides 5xx and no answer: these say "not now", not "no" (as in worker/client.py).
RETRY_STATUSES = frozenset({408, 429})
_OPTUNA_STATE = {"complete": COMPLETE, "pruned": PRUNED, "failed": FAIL}


class TrialPruned(Exception):
    """Raise inside `with client.trial(...)` (or from an objective given to optimize) to end the
    trial as pruned; the block swallows it."""


class NoTrialAvailable(HpoError):
    """The claim got 204: nothing of the study to run now. Its budget is used up, it is stopped or
    finished, or max_concurrent of its trials are running elsewhere."""


class LeaseLost(ConflictError):
    """The trial is no longer this process's (409: its lease expired and the reaper failed it, or
    it was finished elsewhere; 404/410: its study was deleted). Nothing more is sent for it."""


@dataclass(frozen=True)
class TrialResult:
    """How one trial of optimize (or a `with client.trial()` block, `t.result`) ended."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL, as in Client.trials()
    value: float | None  # the objective; for a pruned trial its last reported value
    reason: str | None = None  # FAIL: exception, no_value, diverged, interrupted or lease_lost


def default_worker_id() -> str:
    return f"sdk-{socket.gethostname()}-{os.getpid()}"


def _transient(exc: HpoError) -> bool:
    return exc.status is None or exc.status >= 500 or exc.status in RETRY_STATUSES


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:ERROR_LIMIT]


class ClaimedTrial:
    """One trial claimed under a lease: `params`, `number`, `trial_id`, `study`, `workload` (the
    study's workload, a dict), `attempt` (2 and up for a retry, whose `retry_of` is the number of
    the trial it retries), `direction`, and the whole `assignment`. Use it as a context manager
    (see this module's docstring); after the block, `result` says how it ended."""

    def __init__(self, client: Client, assignment: Mapping[str, Any]) -> None:
        self._client = client
        self.assignment: dict[str, Any] = dict(assignment)
        self.trial_id: int = assignment["trial_id"]
        self.study: str = assignment.get("study", "")
        self.number: int = assignment["number"]
        self.params: dict[str, Any] = dict(assignment["params"])
        self.workload: dict[str, Any] = dict(assignment.get("workload") or {})
        self.attempt: int = assignment.get("attempt", 1)
        self.retry_of: int | None = assignment.get("retry_of")
        self.direction: str = assignment.get("direction", "minimize")
        self._lease_id: str = assignment["lease_id"]
        self._lease_seconds = float(assignment["lease_seconds"])
        self._beat = float(assignment["heartbeat_seconds"])
        self._reports: dict[int, float] = {}
        self._prune = False
        self._value: float | None = None
        self._diverged: str | None = None
        self._lost: str | None = None
        self.result: TrialResult | None = None
        self._done = threading.Event()
        self._heartbeat = threading.Thread(target=self._keep_alive, daemon=True, name=f"hpo-heartbeat-{self.trial_id}")
        self._heartbeat.start()

    def __repr__(self) -> str:
        return f"ClaimedTrial(study={self.study!r}, number={self.number}, params={self.params!r})"

    # -- what the user's code calls ------------------------------------------------------

    def report(self, value: float, step: int) -> bool:
        """Record the intermediate value of `step` (an int >= 0, e.g. the epoch) and answer
        whether the service's pruner says stop (also for a stopped study). A NaN or infinite
        value is not sent: it answers True and the trial will end as diverged."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        value = float(value)
        self._check_alive()
        if not math.isfinite(value):
            self._diverged = f"reported {value} at step {step}"
            self._prune = True
            return True
        answer = self._send("report", {"step": step, "value": value}, patience=self._lease_seconds)
        self._reports.setdefault(step, value)  # the service keeps a step's first value too
        self._prune = bool(answer["prune"])
        return self._prune

    def should_prune(self) -> bool:
        """The answer to the last report (False before any)."""
        return self._prune

    @property
    def value(self) -> float | None:
        """The objective the trial completes with (None: the best reported value)."""
        return self._value

    @value.setter
    def value(self, value: float | None) -> None:
        self._value = None if value is None else float(value)

    def complete(self, value: float) -> None:
        """Set the objective; the trial is finished with it when the block ends."""
        self.value = value

    def best_reported(self) -> float | None:
        """The best value reported so far: the lowest, or the highest for a maximized study."""
        if not self._reports:
            return None
        return (max if self.direction == "maximize" else min)(self._reports.values())

    # -- the lease ------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._lost is not None:
            raise LeaseLost(f"trial {self.study}#{self.number} is no longer this process's: {self._lost}", status=409)

    def _send(self, call: str, body: dict[str, Any], *, patience: float) -> dict[str, Any]:
        self._check_alive()
        path = f"/api/v1/trials/{self.trial_id}/{call}"
        deadline = time.monotonic() + patience
        delay = 0.2
        while True:
            try:
                return dict(self._client._request("POST", path, json={"lease_id": self._lease_id, **body}).json())
            except (ConflictError, NotFoundError) as exc:
                self._lost = exc.detail
                raise LeaseLost(exc.detail, status=exc.status, error=exc.error, method="POST", path=path) from exc
            except HpoError as exc:
                left = deadline - time.monotonic()
                if not _transient(exc) or left <= 0:
                    raise
                # At least what a 503's Retry-After asks, with jitter so a pool spreads out.
                wait = max(delay * (1 + random.random()), exc.retry_after or 0.0)
            time.sleep(min(wait, left))
            delay = min(delay * 2, 5.0)

    def _keep_alive(self) -> None:
        failing = False
        while not self._done.wait(self._beat):
            try:
                # Retried for one interval at most: the next beat takes over.
                self._send("heartbeat", {}, patience=self._beat)
            except LeaseLost as exc:
                if not self._done.is_set():
                    log.warning("trial %s#%d: lease lost: %s", self.study, self.number, exc.detail)
                return
            except Exception as exc:  # an outage (or a refused token): the next beat may get through
                if not failing:
                    log.warning("heartbeat of trial %s#%d failed: %s", self.study, self.number, exc)
                failing = True
            else:
                failing = False

    def _stop_heartbeat(self) -> None:
        self._done.set()
        if self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=self._beat + 5)

    # -- the end --------------------------------------------------------------------------

    def __enter__(self) -> ClaimedTrial:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        try:
            finished = False
            if self._lost is None:
                state, value, error, reason = self._outcome(exc)
                # A finish that fails while the user's exception is on its way must not hide it.
                finished = self._finish(state, value, error, reason, quiet=exc is not None and not isinstance(exc, TrialPruned))
            if not finished:
                self.result = TrialResult(self.number, FAIL, None, "lease_lost")
                if exc is None or isinstance(exc, TrialPruned):
                    raise LeaseLost(f"trial {self.study}#{self.number} was not recorded: {self._lost}", status=409)
                return False
        finally:
            self._stop_heartbeat()
        return isinstance(exc, TrialPruned)

    def _outcome(self, exc: BaseException | None) -> tuple[str, float | None, str | None, str | None]:
        """(state, value, error, reason) of the finish for a block that ended with `exc`."""
        if exc is not None and not isinstance(exc, Exception):
            return "failed", None, _describe(exc), "interrupted"
        if exc is not None and not isinstance(exc, TrialPruned):
            return "failed", None, _describe(exc), "exception"
        if self._diverged is not None:
            return "failed", None, self._diverged, "diverged"
        if exc is not None or self._prune:
            return "pruned", None, None, None
        value = self._value if self._value is not None else self.best_reported()
        if value is None:
            return "failed", None, "the trial reported no value and none was set", "no_value"
        if not math.isfinite(value):
            return "failed", None, f"objective value {value}", "diverged"
        return "complete", value, None, None

    def _finish(self, state: str, value: float | None, error: str | None, reason: str | None, *, quiet: bool) -> bool:
        """Send the finish; False when the lease turned out lost. (Not self._lost: a heartbeat
        crossing the finish gets 409 once the trial has ended.)"""
        self._done.set()
        shown = self._reports[max(self._reports)] if state == "pruned" and self._reports else value
        self.result = TrialResult(self.number, _OPTUNA_STATE[state], shown, reason)
        body = {k: v for k, v in {"state": state, "value": value, "error": error, "reason": reason}.items() if v is not None}
        try:
            self._send("finish", body, patience=self._lease_seconds)
        except LeaseLost:
            return False
        except HpoError as exc:
            if not quiet:
                raise
            # Unfinished, its lease expires and the reaper fails (and maybe retries) it.
            log.warning("trial %s#%d could not be finished as %s: %s", self.study, self.number, state, exc)
        return True


def claim(client: Client, study: str, worker_id: str | None = None) -> ClaimedTrial:
    """Claim one trial of `study` (NoTrialAvailable when there is none now)."""
    path = "/api/v1/trials/claim"
    response = client._request("POST", path, json={"worker_id": worker_id or default_worker_id(), "studies": [study]})
    if response.status_code == 204:
        raise NoTrialAvailable(f"study '{study}' has no trial to run now", status=204, error="no_trial", method="POST", path=path)
    trial = ClaimedTrial(client, response.json())
    task = trial.assignment.get("task", "train")
    if task != "train":
        # The study's LR range test (auto_lr_range) needs the built-in trainer: handed back as
        # interrupted, it is queued again for an `hpo worker`.
        try:
            trial._finish("failed", None, f"task {task} needs hpo worker", "interrupted", quiet=True)
        finally:
            trial._stop_heartbeat()
        raise HpoError(f"{trial.study}#{trial.number} is a {task} task, which only `hpo worker` runs; start one for it")
    return trial


def optimize(
    client: Client,
    study: str,
    objective: Callable[[ClaimedTrial], float | None],
    n_trials: int | None = None,
    timeout: float | None = None,
    catch: Iterable[type[Exception]] | type[Exception] = (),
    worker_id: str | None = None,
) -> list[TrialResult]:
    """Client.optimize: claim and run trials until none is left, n_trials ran, or timeout passed."""
    caught = (catch,) if isinstance(catch, type) else tuple(catch)
    worker_id = worker_id or default_worker_id()
    deadline = None if timeout is None else time.monotonic() + timeout
    results: list[TrialResult] = []
    while (n_trials is None or len(results) < n_trials) and (deadline is None or time.monotonic() < deadline):
        try:
            trial = claim(client, study, worker_id)
        except NoTrialAvailable:
            break
        try:
            with trial:
                value = objective(trial)
                if value is not None:
                    trial.value = value
        except caught as exc:
            log.warning("trial %s#%d failed: %s", study, trial.number, _describe(exc))
        except LeaseLost as exc:
            # Not the objective's fault: the service has taken the trial back (and may retry it).
            log.warning("trial %s#%d: %s", study, trial.number, exc.detail)
        assert trial.result is not None
        results.append(trial.result)
    return results
