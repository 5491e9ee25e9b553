"""Plugin and command workloads: the team's own code, always in a child process.

The child runs in its own session (process group), so a crash, os.abort() or segfault there
ends only its trial, and a timeout or a stopping worker can kill everything it started. It
never sees the team token: it speaks the SDK protocol (worker/sdk.py) over two pipes, and this
module relays its reports to the service under the worker's lease, while the heartbeat thread
keeps the lease alive. Every wait is bounded: select() with a short timeout, and the process is
watched on each turn.

    plugin:  python -m worker.plugin_host <entry>      (the worker's own interpreter)
    command: <python> script.py args...  |  ./program args...

How the child's end becomes the trial's:
    exit 0            complete with set_value(), else the best reported value
                      (pruned if the last report answered prune, or the code pruned itself;
                      failed `no_value` when nothing was reported)
    exit N > 0        failed `exit` with the stderr tail (`oom` when it ends in a MemoryError);
                      the plugin host reports the exception itself: `exception`, `oom`, `data`,
                      `not_allowed` (its own check of where the module lies)
    killed by signal  failed `crashed` (SIGABRT, SIGSEGV, ...)
    timeout           the process group is killed: failed `timeout`
    NaN/inf reported  pruned `diverged` (the process gets a short grace to exit, then is killed)
    worker stopping   the process group gets SIGTERM, then SIGKILL: failed `interrupted`

Here: starting the child, watching it, and its end. Which code may run and its command line
are in policy.py, the process itself in child_process.py, the SDK channel in sdk_relay.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from service.spec import Assignment
from worker.client import LeaseLost, ServiceClient
from worker.outbox import Outbox
from worker.workloads import ERROR_CHARS, TrialOutcome, describe, tail
from worker.workloads.child_process import _Child, child_env
from worker.workloads.policy import Policy, child_argv
from worker.workloads.sdk_relay import _Relay

log = logging.getLogger("hpo.worker")

POLL_SECONDS = 0.25
# After SIGTERM (worker stopping) or a divergence, the child gets this long before SIGKILL.
GRACE_SECONDS = 5.0


def run_user_workload(
    a: Assignment,
    *,
    client: ServiceClient,
    lease_lost: threading.Event,
    stop: threading.Event,
    device: str,
    data_root: Path | None,
    policy: Policy,
    outbox: Outbox | None = None,
) -> TrialOutcome:
    argv, why = child_argv(a, policy)
    if argv is None:
        return TrialOutcome("failed", error=why, reason="not_allowed")
    timeout = a.workload.timeout_seconds or policy.trial_timeout
    params = a.hyperparameters()
    workdir = tempfile.mkdtemp(prefix=f"hpo-trial-{a.trial_id}-")
    trial_file = os.path.join(workdir, "trial.json")
    with open(trial_file, "w", encoding="utf-8") as f:
        json.dump(
            {
                "trial_id": a.trial_id,
                "study": a.study,
                "number": a.number,
                "params": params,
                "workload": a.workload.model_dump(mode="json"),
                "direction": a.direction,
                "objectives": a.objectives,
                "device": device,
                "data_root": None if data_root is None else str(data_root),
            },
            f,
        )
    # requests: child -> worker; answers: worker -> child.
    req_r, req_w = os.pipe()
    ans_r, ans_w = os.pipe()
    child: _Child | None = None
    try:
        try:
            child = _Child(
                argv,
                child_env(a, params, trial_file, (ans_r, req_w)),
                (ans_r, req_w),
                policy.trial_memory_mb,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return TrialOutcome("failed", error=f"cannot start the trial's process: {describe(exc)}", reason="exception")
        finally:
            os.close(ans_r)
            os.close(req_w)
        os.set_blocking(req_r, False)
        # A child that never reads its answers must not block the worker on a full pipe.
        os.set_blocking(ans_w, False)
        relay = _Relay(a, client, lease_lost, outbox)
        try:
            ended = _supervise(child, relay, req_r, ans_w, stop, timeout)
        except LeaseLost:
            child.kill_group()
            raise
        except Exception as exc:  # e.g. the service is unreachable after retries
            child.kill_group()
            return TrialOutcome("failed", relay.best, f"relaying to the service failed: {describe(exc)}", relay.reports, "exception")
        return _outcome(child, relay, ended, timeout)
    finally:
        for fd in (req_r, ans_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if child is not None:
            if child.proc.returncode is None:  # left early (lease lost, relay failure): end it all
                child.kill_group()
            child.proc.wait()
            if child.proc.stderr is not None:
                child.proc.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(child: _Child, relay: _Relay, req_r: int, ans_w: int, stop: threading.Event, timeout: float | None) -> str:
    """Relay until the child ends; answers how: exited, timeout, interrupted, lost, diverged."""
    deadline = None if timeout is None else time.monotonic() + timeout
    open_fds = {req_r, child.stderr_fd}
    while True:
        if child.exited():
            _drain(child, relay, req_r, ans_w, open_fds)
            # Still unreaped, so its group id is still its own: whatever it left running
            # (a background process holding the GPU) goes too.
            child.kill_group()
            return "exited"
        if relay.lease_lost.is_set():
            child.kill_group()
            return "lost"
        if stop.is_set():
            child.terminate(GRACE_SECONDS)
            return "interrupted"
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            child.kill_group()
            return "timeout"
        if relay.diverged_at is not None and now - relay.diverged_at > GRACE_SECONDS:
            child.kill_group()
            return "diverged"
        wait = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - now))
        if not open_fds:  # both pipes closed; only the process is left to watch
            time.sleep(wait)
            continue
        ready, _, _ = select.select(list(open_fds), [], [], wait)
        for fd in ready:
            _read(fd, child, relay, req_r, ans_w, open_fds)


def _drain(child: _Child, relay: _Relay, req_r: int, ans_w: int, open_fds: set[int]) -> None:
    """What the child wrote just before it ended (a background process may keep a pipe open,
    so this reads what is there, not up to EOF, and not forever)."""
    for _ in range(1000):
        if not open_fds:
            return
        ready, _, _ = select.select(list(open_fds), [], [], 0)
        if not ready:
            return
        for fd in ready:
            _read(fd, child, relay, req_r, ans_w, open_fds)


def _read(fd: int, child: _Child, relay: _Relay, req_r: int, ans_w: int, open_fds: set[int]) -> None:
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        open_fds.discard(fd)
        return
    if fd != req_r:
        child.take_stderr(data)
        return
    for line in relay.feed(data):
        answer = relay.handle(line)
        try:
            os.write(ans_w, (json.dumps(answer) + "\n").encode())
        except OSError as exc:  # the child is gone, or does not read its answers
            if exc.errno not in (errno.EPIPE, errno.EAGAIN):
                raise


def _outcome(child: _Child, relay: _Relay, ended: str, timeout: float | None) -> TrialOutcome:
    child.proc.wait()
    metrics = {**relay.metrics, "reports": float(relay.reports)}

    def out(state: Any, error: str | None = None, reason: str | None = None, value: float | None = None) -> TrialOutcome:
        return TrialOutcome(state, relay.best if value is None else value, error, relay.reports, reason, metrics)

    stderr = child.stderr_text()

    def with_stderr(text: str) -> str:
        # The head says what happened; the end of stderr says why (the service keeps ~2000 chars).
        return text + ("\nstderr:\n" + tail(stderr, ERROR_CHARS - len(text) - 9) if stderr else "")

    if ended == "lost":
        return out(None, "lease lost")
    if ended == "interrupted":
        return out("failed", f"worker stopped by signal after {relay.reports} reports", "interrupted")
    if ended == "timeout":
        return out("failed", with_stderr(f"timed out after {timeout:g}s; the process group was killed"), "timeout")
    if relay.diverged is not None:
        return out("pruned", f"diverged: {relay.diverged}", "diverged")
    code = child.proc.returncode
    if relay.error is not None and code != 0:
        reason, message = relay.error
        return out("failed", tail(message or with_stderr(f"exit code {code}")), reason)
    if code < 0:
        name = _signal_name(-code)
        hint = " (often the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return out("failed", with_stderr(f"killed by signal {name}{hint}"), "crashed")
    if code > 0:
        last_line = stderr.splitlines()[-1] if stderr else ""
        oom = last_line.startswith("MemoryError") or "out of memory" in last_line.lower()
        return out("failed", with_stderr(f"exit code {code}"), "oom" if oom else "exit")
    if relay.last_prune or relay.self_pruned:
        return out("pruned")
    value = relay.value if relay.value is not None else relay.best
    if value is None:
        return out(
            "failed",
            "no value reported: call trial.report(value, step) or trial.set_value(value), or return a number from the plugin",
            "no_value",
        )
    return out("complete", value=value)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
