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
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.spec import Assignment
from worker.client import LeaseLost, ServiceClient
from worker.outbox import Outbox
from worker.workloads import ERROR_CHARS, TrialOutcome, describe, finite_metrics, tail
from worker.workloads.allow import (
    NotAllowed,
    check_plugin_place,
    command_allowed,
    plugin_allowed,
    plugin_search_path,
    real_path,
    split_entry,
)

log = logging.getLogger("hpo.worker")

STDERR_TAIL_BYTES = 2048
POLL_SECONDS = 0.25
# After SIGTERM (worker stopping) or a divergence, the child gets this long before SIGKILL.
GRACE_SECONDS = 5.0
MAX_USER_METRICS = 40
KNOWN_REASONS = frozenset({"exception", "oom", "data", "not_allowed"})  # what the plugin host may report


@dataclass
class Policy:
    """The worker's rules for user workloads (WorkerSettings / CLI flags)."""

    allow_plugins: list[str] = field(default_factory=list)
    allow_commands: list[str] = field(default_factory=list)
    trial_timeout: float | None = None  # when the workload sets no timeout_seconds
    trial_memory_mb: int | None = None  # RLIMIT_AS for the child


def child_argv(a: Assignment, policy: Policy, cwd: str | None = None) -> tuple[list[str] | None, str | None]:
    """The child's command line, or None and why this worker refuses the trial's code."""
    w = a.workload
    if w.model == "plugin":
        assert w.entry is not None
        why = plugin_refusal(w.entry, policy, cwd)
        if why is not None:
            return None, why
        # The worker's own interpreter; `-m` puts the working directory on the child's sys.path.
        return [sys.executable, "-m", "worker.plugin_host", w.entry], None
    assert w.model == "command" and w.command is not None
    real = command_allowed(w.command, policy.allow_commands, cwd)
    if real is None:
        return None, command_refusal(w.command, policy, cwd)
    # The path that was checked runs, not the one written: a symlink swapped later changes nothing.
    if real.endswith(".py"):
        return [sys.executable, real, *w.args], None
    return [real, *w.args], None


def plugin_refusal(entry: str, policy: Policy, cwd: str | None = None) -> str | None:
    """Why this worker refuses the plugin entry, or None. The plugin host checks the module's
    place again with its own sys.path before importing it."""
    how = (
        f"allow it with --allow-plugin {entry!r} or HPO_ALLOW_PLUGINS='[\"{entry}\"]' (fnmatch patterns on "
        f"`package.module:function`, e.g. 'mypkg.*:train'; the module must lie inside its package's real "
        f"directory); allowed now: {policy.allow_plugins or 'none'}"
    )
    try:
        split_entry(entry)
    except NotAllowed as exc:
        return str(exc)
    if not plugin_allowed(entry, policy.allow_plugins):
        return f"plugin entry {entry!r} is not allowed on this worker; {how}"
    try:
        check_plugin_place(entry, plugin_search_path(cwd))
    except NotAllowed as exc:
        return f"plugin entry {entry!r} is not allowed on this worker: {exc}"
    return None


def command_refusal(command: str, policy: Policy, cwd: str | None = None) -> str:
    real = real_path(command, cwd)
    if not os.path.isfile(real):
        return f"command {command!r} (real path {real}) is not allowed on this worker: no such file"
    return (
        f"command {command!r} (real path {real}) is not allowed on this worker; "
        f"allow it with --allow-command PATTERN or HPO_ALLOW_COMMANDS='[\"PATTERN\"]' (glob on the real "
        f"path of an existing file, relative to the worker's directory, e.g. 'scripts/*.py'); "
        f"allowed now: {policy.allow_commands or 'none'}"
    )


def child_env(a: Assignment, params: dict[str, Any], trial_file: str, fds: tuple[int, int]) -> dict[str, str]:
    # The worker's own settings (the token first of all) stay out of user code's environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    for name, value in params.items():
        env[f"HPO_PARAM_{name.upper()}"] = str(value)
    env["HPO_TRIAL_FILE"] = trial_file
    env["HPO_SDK_FDS"] = f"{fds[0]},{fds[1]}"
    env.setdefault("PYTHONUNBUFFERED", "1")  # the child's output reaches the log as it happens
    return env


def _death_signal_setter() -> Any:
    """prctl(PR_SET_PDEATHSIG) on Linux: the child is killed if the worker dies first."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _death_signal_setter()
_PR_SET_PDEATHSIG = 1


def _preexec(memory_mb: int | None, parent: int) -> Any:
    """The child's set-up between fork and exec: two system calls, everything else computed
    here in the parent. (PR_SET_PDEATHSIG fires when the forking thread ends; the runner forks
    from the thread that runs the claim loop, which lives as long as the worker.)"""
    limit = None if memory_mb is None else memory_mb * 1024 * 1024
    if limit is not None:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)  # an unprivileged process can only lower its hard limit

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
            if os.getppid() != parent:  # the worker died before prctl took effect
                os._exit(1)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return setup


class _Relay:
    """The worker's side of the SDK channel for one trial."""

    def __init__(
        self, a: Assignment, client: ServiceClient, lease_lost: threading.Event, outbox: Outbox | None = None
    ) -> None:
        self.a = a
        self.client = client
        # Reports go through the trial's outbox: queued (and the child told "go on") while the
        # service is away, delivered in order when it answers again.
        self.outbox = outbox if outbox is not None else Outbox(client, a)
        self.lease_lost = lease_lost
        self._better = min if a.direction == "minimize" else max
        self.best: float | None = None
        self.reports = 0
        self.last_prune = False
        self.self_pruned = False
        self.value: float | None = None
        self.diverged: str | None = None
        self.diverged_at: float | None = None
        self.error: tuple[str, str] | None = None  # (reason, message) from the plugin host
        self.metrics: dict[str, float] = {}
        self.lost = False
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Complete request lines in the data read so far."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line for line in lines if line.strip()]

    def _diverge(self, why: str) -> None:
        if self.diverged is None:
            self.diverged = why
            self.diverged_at = time.monotonic()

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            return {"error": "not a JSON object"}
        if not isinstance(message, dict):
            return {"error": "not a JSON object"}
        op = message.get("op")
        if op == "report":
            return self._report(message)
        if op == "value":
            value = message.get("value")
            if not _is_number(value):
                return {"error": f"value must be a number, got {value!r}"}
            if not math.isfinite(value):
                self._diverge(f"the objective is {value}")
            else:
                self.value = float(value)
            return {"ok": True}
        if op == "metrics":
            metrics = message.get("metrics")
            if not isinstance(metrics, dict):
                return {"error": "metrics must be an object of names to numbers"}
            # What the service accepts: up to 50 names of up to 64 characters ("reports" is ours).
            for name, number in finite_metrics(metrics).items():
                if len(name) <= 64 and (name in self.metrics or len(self.metrics) < MAX_USER_METRICS):
                    self.metrics[name] = number
            return {"ok": True}
        if op == "pruned":
            self.self_pruned = True
            return {"ok": True}
        if op == "error":
            reason = message.get("reason")
            self.error = (reason if reason in KNOWN_REASONS else "exception", str(message.get("message") or ""))
            return {"ok": True}
        return {"error": f"unknown op {op!r}; expected report, value, metrics, pruned or error"}

    def _report(self, message: dict[str, Any]) -> dict[str, Any]:
        step, value = message.get("step"), message.get("value")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return {"error": f"step must be an int >= 0, got {step!r}"}
        if not _is_number(value):
            return {"error": f"value must be a number, got {value!r}"}
        if self.diverged is not None:
            return {"prune": True}
        if not math.isfinite(value):
            # Not a value Optuna can rank: the run diverged; it gets no more device time.
            self._diverge(f"reported value is {value} at step {step}")
            return {"prune": True}
        value = float(value)
        self.last_prune = self.outbox.send(step, value)  # LeaseLost propagates
        self.reports += 1
        self.best = value if self.best is None else self._better(self.best, value)
        return {"prune": self.last_prune}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Child:
    """The child process, its process group, and the two pipes we read."""

    def __init__(self, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...], memory_mb: int | None) -> None:
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
            start_new_session=True,  # its own process group: killpg reaches what it started
            preexec_fn=_preexec(memory_mb, os.getpid()),
        )
        assert self.proc.stderr is not None
        self.stderr_fd = self.proc.stderr.fileno()
        os.set_blocking(self.stderr_fd, False)
        self.stderr_tail = bytearray()

    def exited(self) -> bool:
        """Whether the child has ended, without reaping it: while it is an unreaped zombie its
        process-group id cannot be reused, so killing the group afterwards is safe."""
        if self.proc.returncode is not None:
            return True
        if hasattr(os, "waitid"):
            try:
                return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            except ChildProcessError:
                return True
        return self.proc.poll() is not None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.returncode is not None:
            return  # reaped: the group id may belong to someone else by now
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, grace: float) -> None:
        """SIGTERM to the group, then SIGKILL after `grace` seconds."""
        self.kill_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not self.exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.kill_group(signal.SIGKILL)

    def take_stderr(self, data: bytes) -> None:
        try:  # pass the child's stderr through to the worker's log
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()
        except (AttributeError, OSError, ValueError):
            pass
        self.stderr_tail += data
        del self.stderr_tail[:-STDERR_TAIL_BYTES]

    def stderr_text(self) -> str:
        return self.stderr_tail.decode("utf-8", errors="replace").strip()


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
