#!/usr/bin/env python
"""Chaos run: real `hpo worker` processes train one study while the harness SIGKILLs workers,
restarts PostgreSQL and SIGKILLs/restarts the API, then checks that nothing was lost.

    .venv/bin/python bench/chaos.py --workers 8 --trials 200 --kills 3 --db-restarts 1 --api-restarts 1

Everything runs on a throwaway PostgreSQL cluster (tests/pg_cluster.py) in a temp directory on a
free port, never on a shared server. At the end (study done, or --timeout) the workers are
stopped, the harness waits past the lease grace period, reads Optuna's storage directly and
prints ONE summary line:

    chaos: workers=8 trials=200 kills=3 db_restarts=1 api_restarts=1 | COMPLETE=.. PRUNED=.. FAIL=..
      RUNNING=0 WAITING=0 | lineages=200 duplicate_numbers=0 running_after_grace=0
      missing_acked_reports=0 tracebacks=0 5xx=0 (503s=.. acked_reports=.. retries=.. seconds=..)

- state counts: every Optuna trial of the study, retries included;
- lineages: distinct lineage roots (a retry's root is retry_history[0] from Optuna's
  RetryHeartbeatStaleTrialCallback, an original trial is its own root); must equal --trials;
- duplicate_numbers: lineages that ended more than once (more than one COMPLETE/PRUNED trial),
  plus trial numbers that occur more than once;
- running_after_grace: trials still RUNNING after the workers stopped and a whole lease grace
  period (plus reaper ticks) passed;
- missing_acked_reports: reports a worker logged as acknowledged (HPO_ACK_LOG) whose step is not
  among that exact trial's intermediate values in storage, or is stored with another value;
- tracebacks: Python tracebacks in the API processes' logs;
- 5xx: API responses >= 500 other than 503 (from uvicorn's access log); 503s are expected while
  the database is down and are shown apart.
In parentheses, for information: 503s, acked_reports (lines in the ack logs), retries (trials
that are retries), killed_mid_trial (SIGKILLed workers whose trial the reaper then failed),
deadlocks (PostgreSQL "deadlock detected" errors in the cluster's log), seconds (until done).
Exit status 0 iff every number between the second `|` and the parentheses is 0, RUNNING=0,
WAITING=0, lineages equals --trials, the study finished (not --timeout, not --stall), and every
requested fault was injected. Each worker writes HPO_ACK_LOG to its own file; with --keep the
temp dir (logs/, acks/, the cluster's data and postgres.log) stays for a post-mortem.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.pg_cluster import PgCluster, free_port  # noqa: E402

BIN = Path(sys.executable).parent
HPO = str(BIN / "hpo")
TERMINAL = ("COMPLETE", "PRUNED", "FAIL")


def log(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


# -- child processes: each in its own process group, all killed on exit ---------------------------

CHILDREN: list[subprocess.Popen[bytes]] = []


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the harness dies (Linux), even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(cmd: Sequence[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    CHILDREN.append(process)
    return process


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(process: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    """SIGTERM to the process group; SIGKILL if it has not exited within `timeout`."""
    if process.poll() is None:
        kill_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(process, signal.SIGKILL)
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


@atexit.register
def kill_all_children() -> None:
    for process in CHILDREN:
        kill_group(process, signal.SIGKILL)
    for process in CHILDREN:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# -- the API --------------------------------------------------------------------------------------


class ApiServer:
    """One `hpo serve` process on a fixed port, logging (access log included) to a file per start."""

    def __init__(self, env: dict[str, str], logs: Path, name: str = "api", port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "HPO_HOST": "127.0.0.1", "HPO_PORT": str(self.port)}
        self.logs = logs
        self.name = name
        self.starts = 0
        self.log_files: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        from hpo_client import Client

        path = self.logs / f"{self.name}-{self.starts}.log"
        self.starts += 1
        self.log_files.append(path)
        self.process = spawn([HPO, "serve", "--host", "127.0.0.1", "--port", str(self.port)], self.env, path)
        process = self.process
        with Client(self.url, None, timeout=1) as client:
            if client.wait_until_healthy(timeout, running=lambda: process.poll() is None):
                return
        if process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {process.returncode} during start-up:\n{tail(path)}")
        raise RuntimeError(f"{self.name} did not become healthy:\n{tail(path)}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye; in-flight requests just lose their connection."""
        if self.process is not None:
            kill_group(self.process, signal.SIGKILL)
            self.process.wait(timeout=30)

    def restart(self, down_seconds: float = 1.0) -> None:
        self.kill()
        time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, timeout=20)

    def client(self, token: str) -> Any:
        import httpx

        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def start_worker(
    server_url: str, token: str, worker_id: str, env: dict[str, str], logs: Path, ack_log: Path, *args: str
) -> subprocess.Popen[bytes]:
    cmd = [HPO, "worker", "--server", server_url, "--token", token, "--threads", "1", "--device", "cpu"]
    cmd += ["--worker-id", worker_id, *args]
    ack_log.parent.mkdir(parents=True, exist_ok=True)
    return spawn(cmd, {**env, "HPO_ACK_LOG": str(ack_log)}, logs / f"{worker_id}.log")


# -- what the checks read -------------------------------------------------------------------------


def server_env(
    database_url: str, *, lease_seconds: float, heartbeat_seconds: float, reaper_seconds: float
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(
        HPO_DATABASE_URL=database_url,
        HPO_LEASE_SECONDS=str(lease_seconds),
        HPO_HEARTBEAT_SECONDS=str(heartbeat_seconds),
        HPO_REAPER_SECONDS=str(reaper_seconds),
        HPO_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_hpo(*args: str, env: dict[str, str], timeout: float = 180) -> str:
    result = subprocess.run([HPO, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"hpo {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def open_storage(url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True, "pool_size": 1, "max_overflow": 1})


def lineage_root(trial: Any) -> int:
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[0] if history else trial.number


@dataclass
class Analysis:
    counts: Counter[str]
    lineages: int
    duplicate_numbers: int
    finished_lineages: int  # lineages whose latest attempt is COMPLETE, PRUNED or FAIL
    ended_by_lineage: Counter[str]  # the latest attempt's state, per lineage
    retries: int
    by_root: dict[int, list[Any]] = field(default_factory=dict)


def analyse(trials: Iterable[Any]) -> Analysis:
    trials = list(trials)
    counts = Counter(t.state.name for t in trials)
    by_root: dict[int, list[Any]] = defaultdict(list)
    for t in trials:
        by_root[lineage_root(t)].append(t)
    numbers = Counter(t.number for t in trials)
    duplicates = sum(1 for ts in by_root.values() if sum(t.state.name in ("COMPLETE", "PRUNED") for t in ts) > 1)
    duplicates += sum(n - 1 for n in numbers.values() if n > 1)
    latest = {root: max(ts, key=lambda t: t.number) for root, ts in by_root.items()}
    ended = Counter(t.state.name for t in latest.values())
    return Analysis(
        counts=counts,
        lineages=len(by_root),
        duplicate_numbers=duplicates,
        finished_lineages=sum(ended[s] for s in TERMINAL),
        ended_by_lineage=ended,
        retries=len(trials) - len(by_root),
        by_root=dict(by_root),
    )


def read_acks(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The HPO_ACK_LOG lines of every worker; a line cut short by a SIGKILL is skipped."""
    acks = []
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                acks.append(json.loads(line))
            except ValueError:
                pass
    return acks


def missing_acked_reports(storage: Any, acks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Acknowledged (trial_id, step) pairs whose value that very trial does not hold in storage."""
    import math

    missing = []
    cache: dict[int, dict[int, float]] = {}
    for ack in acks:
        trial_id = int(ack["trial_id"])
        if trial_id not in cache:
            try:
                cache[trial_id] = dict(storage.get_trial(trial_id).intermediate_values)
            except KeyError:
                cache[trial_id] = {}
        stored = cache[trial_id].get(int(ack["step"]))
        value = ack.get("value")
        same = stored is not None and (
            stored == value
            or (isinstance(value, (int, float)) and math.isclose(stored, value, rel_tol=1e-9, abs_tol=1e-12))
            or (isinstance(value, float) and math.isnan(value) and math.isnan(stored))
        )
        if not same:
            missing.append({**ack, "stored": stored})
    return missing


_ACCESS = re.compile(r'"[A-Z]+ \S+ HTTP/[\d.]+" (\d{3})')


@dataclass
class LogScan:
    statuses: Counter[int]
    tracebacks: int
    examples: list[str]

    @property
    def errors_5xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 and status != 503)

    @property
    def unavailable(self) -> int:
        return self.statuses.get(503, 0)


def scan_api_logs(paths: Iterable[Path]) -> LogScan:
    statuses: Counter[int] = Counter()
    tracebacks = 0
    examples: list[str] = []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        for i, line in enumerate(lines):
            m = _ACCESS.search(line)
            if m:
                status = int(m.group(1))
                statuses[status] += 1
                if status >= 500 and status != 503 and len(examples) < 5:
                    examples.append(f"{path.name}: {line.strip()}")
            if line.startswith("Traceback (most recent call last)"):
                tracebacks += 1
                if len(examples) < 5:
                    examples.append(
                        f"{path.name}: " + " | ".join(x.strip() for x in lines[i : i + 40] if x.strip())[-600:]
                    )
    return LogScan(statuses, tracebacks, examples)


def count_deadlocks(postgres_log: Path) -> int:
    """PostgreSQL's own "deadlock detected" errors: one side's transaction was aborted."""
    try:
        return postgres_log.read_text(errors="replace").count("ERROR:  deadlock detected")
    except OSError:
        return 0


def chaos_definition(
    name: str, n_trials: int, max_concurrent: int, epochs: int, max_retries: int = 3
) -> dict[str, Any]:
    """A workload that trains in milliseconds: the run measures the service, not the model."""
    return {
        "name": name,
        "direction": "minimize",
        "workload": {
            "model": "mlp",
            "dataset": {"kind": "synthetic", "n_samples": 600, "n_features": 8, "n_classes": 2},
            "epochs": epochs,
            "hidden_size": 8,
            "n_layers": 1,
            "batch_size": 64,
        },
        "space": {
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        "sampler": {"kind": "random", "seed": 0},
        "pruner": {"kind": "median", "n_startup_trials": 5, "n_warmup_steps": 0},
        "budget": {"n_trials": n_trials, "max_concurrent": max_concurrent, "max_retries": max_retries},
    }


# -- the run --------------------------------------------------------------------------------------


def schedule(
    kills: int, db_restarts: int, api_restarts: int, first: float = 0.1, last: float = 0.75
) -> list[tuple[float, str]]:
    """Each fault at a fraction of finished lineages, spread evenly and interleaved."""
    keyed = [((j + 0.5) / kills, 0, "kill") for j in range(kills)]
    keyed += [((j + 0.5) / db_restarts, 1, "db") for j in range(db_restarts)]
    keyed += [((j + 0.5) / api_restarts + 0.01, 2, "api") for j in range(api_restarts)]
    keyed.sort()
    n = len(keyed)
    return [
        (first + (last - first) * (i / max(1, n - 1)) if n > 1 else (first + last) / 2, kind)
        for i, (_, _, kind) in enumerate(keyed)
    ]


@dataclass
class Harness:
    args: argparse.Namespace
    workdir: Path
    cluster: PgCluster
    env: dict[str, str]
    token: str
    apis: list[ApiServer]
    rng: random.Random
    workers: dict[int, tuple[str, subprocess.Popen[bytes]]] = field(default_factory=dict)
    generation: Counter[int] = field(default_factory=Counter)
    done: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    killed_trials: list[int] = field(default_factory=list)  # trial ids whose worker was SIGKILLed

    def ack_path(self, worker_id: str) -> Path:
        return self.workdir / "acks" / f"{worker_id}.jsonl"

    def start_worker(self, slot: int) -> None:
        worker_id = f"w{slot}.{self.generation[slot]}"
        self.generation[slot] += 1
        api = self.apis[slot % len(self.apis)]
        self.ack_path(worker_id).parent.mkdir(parents=True, exist_ok=True)
        process = start_worker(
            api.url, self.token, worker_id, self.env, self.workdir / "logs", self.ack_path(worker_id)
        )
        self.workers[slot] = (worker_id, process)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.0f}s"

    def inject(self, kind: str, storage: Any, study_id: int) -> None:
        if kind == "kill":
            # The worker of the trial that started last: most likely still training when the
            # SIGKILL lands (a fresh read; the trials of this workload last well under a second).
            from optuna.trial import TrialState

            slot, trial_id = None, None
            try:
                running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            except Exception:
                running = []
            by_worker = {wid: s for s, (wid, _) in self.workers.items()}
            for t in sorted(running, key=lambda t: t.datetime_start or datetime.min, reverse=True):
                if t.user_attrs.get("worker_id") in by_worker:
                    slot, trial_id = by_worker[t.user_attrs["worker_id"]], t._trial_id
                    break
            if slot is None:
                slot = self.rng.choice(list(self.workers))
            worker_id, process = self.workers[slot]
            kill_group(process, signal.SIGKILL)
            process.wait(timeout=30)
            if trial_id is not None:
                self.killed_trials.append(trial_id)
            log(
                f"[{self.elapsed()}] SIGKILL worker {worker_id} "
                f"({f'on trial id {trial_id}' if trial_id else 'idle'}); starting a replacement"
            )
            self.start_worker(slot)
            self.done["kills"] += 1
        elif kind == "db":
            log(f"[{self.elapsed()}] PostgreSQL: stop -m fast, {self.args.db_down:g}s down, start")
            self.cluster.stop()
            time.sleep(self.args.db_down)
            self.cluster.start()
            self.done["db_restarts"] += 1
        elif kind == "api":
            api = self.apis[self.done["api_restarts"] % len(self.apis)]
            log(f"[{self.elapsed()}] SIGKILL {api.name} on port {api.port}; restarting it on the same port")
            api.restart(down_seconds=1.0)
            self.done["api_restarts"] += 1


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    # One temp dir for the cluster's data, the logs and the ack logs: the cluster's watchdog
    # removes it even if this process is SIGKILLed.
    cluster = PgCluster(prefix="hpo-chaos-", keep=args.keep)
    workdir = cluster.dir
    apis: list[ApiServer] = []
    harness: Harness | None = None
    try:
        cluster.start()
        url = cluster.create_database("chaos")
        env = server_env(url, lease_seconds=args.lease_seconds, heartbeat_seconds=1, reaper_seconds=args.reaper_seconds)
        run_hpo("migrate", env=env)
        token = run_hpo("token", "create", "--team", "chaos", env=env).strip().splitlines()[-1]
        for i in range(args.api_processes):
            apis.append(ApiServer(env, workdir / "logs", name=f"api{i}"))
            apis[-1].start()
        with apis[0].client(token) as c:
            r = c.post(
                "/api/v1/studies",
                json=chaos_definition("chaos", args.trials, args.workers, args.epochs, args.max_retries),
            )
            if r.status_code != 201:
                raise RuntimeError(f"creating the study answered {r.status_code}: {r.text}")
            optuna_name = r.json()["optuna_name"]
        storage = open_storage(url)
        study_id = storage.get_study_id_from_name(optuna_name)
        harness = Harness(args, workdir, cluster, env, token, apis, random.Random(args.seed))
        for slot in range(args.workers):
            harness.start_worker(slot)
        events = schedule(args.kills, args.db_restarts, args.api_restarts)
        log(
            f"{args.workers} workers, {args.trials} trials, {len(apis)} API process(es); "
            f"faults at {[(round(p, 2), k) for p, k in events]}; work dir {workdir}"
        )

        finished = False
        settled = 0
        deadline = started + args.timeout
        last_event = 0.0
        last_note = time.monotonic()
        snapshot: tuple[Any, ...] = ()
        last_change = time.monotonic()
        stalled = False
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                trials = storage.get_all_trials(study_id, deepcopy=False)
            except Exception:  # the database is down (we did that): look again later
                continue
            a = analyse(trials)
            now = (len(trials), sorted(a.counts.items()), sum(len(t.intermediate_values) for t in trials))
            if now != snapshot:
                snapshot, last_change = now, time.monotonic()
            elif not events and time.monotonic() - last_change > args.stall:
                stalled = True  # nothing moved for a long while: waiting longer will not help
                break
            if events and a.finished_lineages >= events[0][0] * args.trials and time.monotonic() - last_event > 2:
                _, kind = events.pop(0)
                harness.inject(kind, storage, study_id)
                last_event = time.monotonic()
                continue
            if time.monotonic() - last_note > 30:
                log(f"[{harness.elapsed()}] {a.finished_lineages}/{args.trials} lineages done, states {dict(a.counts)}")
                last_note = time.monotonic()
            # Done: every lineage ended and nothing waits or runs, seen twice in a row.
            quiet = a.counts["RUNNING"] == 0 and a.counts["WAITING"] == 0
            if not events and a.lineages >= args.trials and a.finished_lineages == a.lineages and quiet:
                settled += 1
                if settled >= 2:
                    finished = True
                    break
            else:
                settled = 0
            for slot, (worker_id, process) in list(harness.workers.items()):
                if process.poll() is not None:
                    log(
                        f"worker {worker_id} exited by itself with {process.returncode}; starting a replacement:\n"
                        + tail(workdir / "logs" / f"{worker_id}.log", 15)
                    )
                    harness.start_worker(slot)
        if stalled:
            log(f"stalled: nothing changed for {args.stall:g}s ({dict(a.counts)}); giving up")
        elif not finished:
            log(f"timeout after {args.timeout:g}s; {len(events)} fault(s) not injected")
        run_seconds = time.monotonic() - started

        for _, process in harness.workers.values():
            terminate(process, timeout=30)
        grace = args.lease_seconds + 3 * args.reaper_seconds + 2
        time.sleep(grace)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        a = analyse(trials)
        acks = read_acks(sorted((workdir / "acks").glob("*.jsonl")))
        missing = missing_acked_reports(storage, acks)
        storage.engine.dispose()
        for api in apis:
            api.stop()
        scan = scan_api_logs(p for api in apis for p in api.log_files)

        # A kill that landed mid-trial leaves that trial to the reaper: it ends FAIL and is retried.
        failed_ids = {t._trial_id for t in trials if t.state.name == "FAIL"}
        killed_mid_trial = sum(1 for tid in harness.killed_trials if tid in failed_ids)
        deadlocks = count_deadlocks(cluster.log)
        zeros = {
            "duplicate_numbers": a.duplicate_numbers,
            "running_after_grace": a.counts["RUNNING"],
            "missing_acked_reports": len(missing),
            "tracebacks": scan.tracebacks,
            "5xx": scan.errors_5xx,
        }
        print(
            f"chaos: workers={args.workers} trials={args.trials} kills={harness.done['kills']} "
            f"db_restarts={harness.done['db_restarts']} api_restarts={harness.done['api_restarts']} | "
            + " ".join(f"{s}={a.counts[s]}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"))
            + f" | lineages={a.lineages} "
            + " ".join(f"{k}={v}" for k, v in zeros.items())
            + f" (503s={scan.unavailable} acked_reports={len(acks)} retries={a.retries} killed_mid_trial={killed_mid_trial}"
            f" deadlocks={deadlocks} seconds={run_seconds:.0f})",
            flush=True,
        )
        for t in trials:
            if t.state.name in ("RUNNING", "WAITING"):
                log(
                    f"left {t.state.name}: trial #{t.number} (id {t._trial_id}) started {t.datetime_start} "
                    f"worker={t.user_attrs.get('worker_id')} steps={sorted(t.intermediate_values)} "
                    f"system_attrs={ {k: v for k, v in t.system_attrs.items() if not k.startswith('checkpoint')} }"
                )
        if a.lineages != args.trials:
            unacked = sorted(t.number for t in trials if t._trial_id not in {int(x["trial_id"]) for x in acks})
            log(
                f"{a.lineages} lineages for n_trials={args.trials}; "
                f"trials no worker acknowledged a report of: {unacked[:20]}"
            )
        for m in missing[:5]:
            log(f"acked but not stored: {m}")
        for example in scan.examples:
            log(f"API log: {example}")
        if not acks:
            log("no worker wrote an ack log (HPO_ACK_LOG): missing_acked_reports checked nothing")
        injected = (harness.done["kills"], harness.done["db_restarts"], harness.done["api_restarts"])
        ok = (
            finished
            and all(v == 0 for v in zeros.values())
            and a.counts["RUNNING"] == 0
            and a.counts["WAITING"] == 0
            and a.lineages == args.trials
            and injected == (args.kills, args.db_restarts, args.api_restarts)
        )
        return 0 if ok else 1
    finally:
        kill_all_children()
        cluster.cleanup()  # also removes workdir, unless --keep
        if args.keep:
            print(f"chaos: kept {workdir} (logs/, acks/, data/ and postgres.log)", file=sys.stderr)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", type=int, default=8, help="hpo worker processes (also the study's max_concurrent)")
    p.add_argument("--trials", type=int, default=200, help="the study's n_trials")
    p.add_argument("--kills", type=int, default=3, help="workers SIGKILLed mid-run (each replaced)")
    p.add_argument("--db-restarts", type=int, default=1, help="PostgreSQL stop -m fast / start cycles")
    p.add_argument("--db-down", type=float, default=4.0, help="seconds PostgreSQL stays down per restart")
    p.add_argument("--api-restarts", type=int, default=1, help="API processes SIGKILLed and restarted on their port")
    p.add_argument(
        "--api-processes", type=int, default=1, help="separate `hpo serve` processes; workers split between them"
    )
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-retries", type=int, default=3, help="the study's budget.max_retries")
    p.add_argument("--lease-seconds", type=float, default=6.0, help="HPO_LEASE_SECONDS (the grace period)")
    p.add_argument("--reaper-seconds", type=float, default=1.0, help="HPO_REAPER_SECONDS")
    p.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    p.add_argument("--stall", type=float, default=60, help="give up once nothing changed for this many seconds")
    p.add_argument("--seed", type=int, default=0, help="which workers get killed")
    p.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, ack logs, database) and print its path"
    )
    args = p.parse_args(argv)
    if args.workers < 1 or args.trials < 1 or args.api_processes < 1:
        p.error("--workers, --trials and --api-processes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def _terminated(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminated)
    try:
        return run(args)
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
