"""A throwaway PostgreSQL cluster that can be stopped and started again: for fault tests and
bench/chaos.py. Never the shared server at 127.0.0.1:5432.

It runs the PostgreSQL binaries the `pgserver` package ships (initdb, pg_ctl), with its data in
a temporary directory and listening on a free TCP port on 127.0.0.1 (plus a unix socket in the
same directory), so `stop()` really drops every client's TCP connection and `start()` brings the
same data back on the same port. As root, PostgreSQL refuses to run; the cluster then runs as
the unprivileged system user pgserver itself uses (`pgserver`, created if missing).

    with PgCluster() as pg:
        url = pg.create_database("hpo")     # postgresql+psycopg://postgres@127.0.0.1:<port>/hpo
        pg.restart(down_seconds=3)          # pg_ctl stop -m fast, wait, pg_ctl start
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

SYSTEM_USER = "pgserver"


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR it warns.
        warnings.simplefilter("ignore")
        import pgserver._commands as commands
    return Path(commands.POSTGRES_BIN_PATH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """initdb in a temp dir; start/stop/restart with pg_ctl; cleanup() stops it and deletes it."""

    def __init__(
        self,
        *,
        port: int | None = None,
        base_dir: str | Path | None = None,
        prefix: str = "hpo-pg-",
        keep: bool = False,
    ) -> None:
        self.bin = _bin_dir()
        # Short paths: the unix socket path must fit in 107 bytes. Callers may keep their own
        # files in `dir` too (bench/chaos.py does): cleanup() and the watchdog remove it all.
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
        self.pgdata = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = port or free_port()
        self.keep = keep
        self._user: str | None = None
        if os.geteuid() == 0:
            self._become_unprivileged()
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--no-sync")
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# hpo fault tests\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "max_connections = 300\n"
                # Durability against an OS crash is not what these tests are about; a fast stop
                # still writes everything committed.
                "fsync = off\nfull_page_writes = off\n"
                "log_min_messages = warning\n"
            )
        self._cleaned = False
        atexit.register(self.cleanup)
        self._watchdog = self._start_watchdog()

    # -- plumbing -------------------------------------------------------------------------------
    def _become_unprivileged(self) -> None:
        import pwd
        import stat

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self.dir)
        ensure_prefix_permissions(self.bin)
        ensure_folder_permissions(self.bin, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._user = SYSTEM_USER

    def _run(self, exe: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        # pg_ctl's postmaster inherits stdout/stderr: never a pipe (reading it would hang), a file.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                [str(self.bin / exe), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                user=self._user,
                cwd=self.dir,
                # Not in the caller's process group: a harness that kills its children's groups
                # must not take the database down with them.
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"},
            )
            out.seek(0)
            output = out.read()
        if check and result.returncode != 0:
            raise RuntimeError(f"{exe} {' '.join(args)} failed ({result.returncode}):\n{output}\n{self._log_tail()}")
        return subprocess.CompletedProcess(result.args, result.returncode, output, "")

    def _start_watchdog(self) -> subprocess.Popen[bytes]:
        """A detached shell that outlives a SIGKILLed owner: when this process is gone it shuts the
        postmaster down (SIGQUIT: immediate shutdown) and, unless kept, deletes the directory.
        cleanup() ends it first, so it never acts on a cluster that was cleaned up normally."""
        script = (
            'while kill -0 "$OWNER" 2>/dev/null; do sleep 2; done; '
            'pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null) && [ -n "$pid" ] && kill -QUIT "$pid"; '
            'sleep 2; [ "$KEEP" = 1 ] || rm -rf "$DIR"'
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OWNER": str(os.getpid()),
            "PGDATA": str(self.pgdata),
            "DIR": str(self.dir),
            "KEEP": "1" if self.keep else "0",
        }
        return subprocess.Popen(
            ["/bin/sh", "-c", script],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- control --------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start")
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m fast: every session is terminated, committed work is kept."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        if down_seconds:
            time.sleep(down_seconds)
        self.start()

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.pgdata), "status", check=False).returncode == 0

    def wait_ready(self, timeout: float = 60) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres", driver=False), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # -- databases ------------------------------------------------------------------------------
    def url(self, database: str = "postgres", *, driver: bool = True) -> str:
        scheme = "postgresql+psycopg" if driver else "postgresql"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE; answers its SQLAlchemy URL (psycopg 3 driver)."""
        import psycopg

        with psycopg.connect(self.url("postgres", driver=False), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    # -- lifetime -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self._watchdog.kill()
        self._watchdog.wait()
        try:
            if (self.pgdata / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
        finally:
            if not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
