"""The child process of a plugin or command trial: its environment, its set-up between fork and
exec (memory cap, death signal), its process group, and the tail of its stderr."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from typing import Any

from service.spec import Assignment

STDERR_TAIL_BYTES = 2048


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
