#!/usr/bin/env python
"""Reports per second through the service with many concurrent workers, against what the same
PostgreSQL does with a bare transaction shaped like a report (pgbench).

    .venv/bin/python -m bench.throughput                        # 32 workers, 20 s each side
    .venv/bin/python -m bench.throughput --api-processes 2      # hpo serve with 2 uvicorn processes
    .venv/bin/python -m bench.throughput --tiny                 # seconds; what tests/test_bench.py runs

Both sides run one after the other in one throwaway database on the PostgreSQL of
`--database-url`, on the same machine:

- service: a real `hpo serve` (`--api-processes` uvicorn processes, default 1) and --workers
  simulated workers (asyncio tasks in this process, one httpx connection each, a worker token).
  Each claims a trial, then holds it and reports steps 1, 2, 3, ... as fast as the answers come
  back. The study is the coordination benchmark's (random sampler, MedianPruner(5, 2)) with
  --prefill earlier COMPLETE trials of --steps steps, so the pruner has curves to compare each
  report against; the workers' losses are below all of them, so no trial is told to prune.
  Counted: reports acknowledged (200) within --seconds, from the moment every worker holds a
  trial.
- pgbench: `pgbench -n -c <workers> -j 2 -T <seconds> -f report.sql` on the same database, the
  transaction being what a report minimally is: insert a (trial, step, value) row into a table
  shaped like Optuna's trial_intermediate_values and update the trial's row in a heartbeat table
  (two small tables the script creates: bench_intermediate_values, bench_heartbeats).
  Without pgbench (not on PATH or in /usr/lib/postgresql/*/bin, nor given by --pgbench) the
  service side is still measured and the ratio is n/a.

The load generator, the API and PostgreSQL share the machine's cores; the script prints the CPU
seconds the API processes and the load generator used, so what limited the run can be read.

Output: a Markdown table, and one line starting with `SUMMARY throughput:`.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    add_database_argument,
    api_server,
    create_study,
    libpq_url,
    log,
    machine_line,
    make_tokens,
    ms,
    optuna_storage,
    percentile,
    print_table,
    ratio,
    throwaway_database,
)
from bench.coordination import BENCH_PRUNER, definition, earlier_trials, prefill  # noqa: E402

TEAM = "bench"
STUDY = "throughput"


def say(message: str) -> None:
    log("throughput", message)


# -- the service side -----------------------------------------------------------------------------


@dataclass
class Load:
    acked: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    pruned: int = 0  # "prune" answers (none expected: see good_value)
    max_step: int = 0


def good_value(step: int) -> float:
    """A loss below every earlier trial's at every step, so the pruner compares (it has the
    earlier trials' curves) but never says prune, and the worker keeps its trial."""
    return 0.04 / (1 + 0.01 * step)


class _Http11:
    """A keep-alive HTTP/1.1 connection speaking only what a report needs: POST a JSON body, read
    a Content-Length answer. The load generator shares the machine's cores with the API and
    PostgreSQL; httpx spends about 0.9 ms of CPU per request here, this about 0.1 ms, so the
    measurement is of the service rather than of its client (pgbench, on the other side, is C).
    `--client httpx` measures with httpx instead."""

    def __init__(self, url: str, token: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token = token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        )
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
            answer = json.loads(await self.reader.readexactly(length))
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
            await self.aclose()
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        return status, answer

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def _worker(
    i: int, url: str, token: str, client_kind: str, start: asyncio.Event, window: list[float], load: Load, ready: list[int]
) -> None:
    import httpx

    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120, limits=httpx.Limits(max_connections=1)
    ) as client:
        response = await client.post("/api/v1/trials/claim", json={"worker_id": f"bench-throughput-{i}", "studies": [STUDY]})
        if response.status_code != 200:
            raise RuntimeError(f"claim answered {response.status_code}: {response.text}")
        trial_id, lease_id = response.json()["trial_id"], response.json()["lease_id"]

        async def post_httpx(path: str, body: dict) -> tuple[int, dict]:
            try:
                response = await client.post(path, json=body)
            except httpx.HTTPError as exc:
                raise ConnectionError(type(exc).__name__) from exc
            return response.status_code, response.json()

        lean = _Http11(url, token)
        post = lean.post if client_kind == "lean" else post_httpx
        ready.append(i)
        await start.wait()
        step = 0
        try:
            while True:
                step += 1
                t0 = time.perf_counter()
                body = {"lease_id": lease_id, "step": step, "value": good_value(step)}
                try:
                    status, answer = await post(f"/api/v1/trials/{trial_id}/report", body)
                except ConnectionError as exc:
                    if time.perf_counter() < window[1]:
                        load.errors[str(exc).split(":")[0]] += 1
                    continue
                t1 = time.perf_counter()
                if t1 > window[1]:
                    return
                if status != 200:
                    load.errors[str(status)] += 1
                    continue
                load.acked += 1
                load.latencies.append(t1 - t0)
                load.max_step = max(load.max_step, step)
                load.pruned += bool(answer["prune"])
        finally:
            await lean.aclose()


async def _service_load(url: str, token: str, workers: int, seconds: float, client_kind: str) -> tuple[Load, float]:
    load, window, ready = Load(), [0.0, math.inf], []
    start = asyncio.Event()
    tasks = [asyncio.create_task(_worker(i, url, token, client_kind, start, window, load, ready)) for i in range(workers)]
    while len(ready) < workers:
        await asyncio.sleep(0.05)
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    window[0] = time.perf_counter()
    window[1] = window[0] + seconds
    start.set()
    await asyncio.gather(*tasks)
    return load, seconds


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (uvicorn's worker processes)."""
    try:
        import psutil
    except ImportError:
        return math.nan
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
        total = 0.0
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return math.nan


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- pgbench --------------------------------------------------------------------------------------

REPORT_SQL = """\
\\set value random(1, 1000000)
BEGIN;
INSERT INTO bench_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)
  VALUES (:client_id + 1, nextval('bench_step'), :value / 1000000.0, 'FINITE');
UPDATE bench_heartbeats SET heartbeat = now() WHERE trial_id = :client_id + 1;
END;
"""


def find_pgbench(given: str | None) -> str | None:
    if given:
        return given if Path(given).exists() or shutil.which(given) else None
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    return candidates[-1] if candidates else None


def pgbench_tables(url: str, clients: int) -> None:
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_intermediate_values (id serial PRIMARY KEY, trial_id integer NOT NULL,"
            " step integer NOT NULL, intermediate_value double precision, intermediate_value_type text NOT NULL,"
            " UNIQUE (trial_id, step))"
        )
        conn.execute("CREATE TABLE bench_heartbeats (trial_id integer PRIMARY KEY, heartbeat timestamp NOT NULL)")
        conn.execute("CREATE SEQUENCE bench_step")
        conn.execute("INSERT INTO bench_heartbeats SELECT g, now() FROM generate_series(1, %s) AS g", (clients,))


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    transactions: int
    output: str


def run_pgbench(pgbench: str, url: str, clients: int, threads: int, seconds: int) -> PgbenchResult:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = {**os.environ}
    cmd = [pgbench, "-n", "-c", str(clients), "-j", str(threads), "-T", str(seconds)]
    host = u.query.get("host") or u.host
    if isinstance(host, tuple):
        host = host[0]
    if host:
        cmd += ["-h", str(host)]
    if u.port:
        cmd += ["-p", str(u.port)]
    if u.username:
        cmd += ["-U", u.username]
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    with tempfile.TemporaryDirectory(prefix="hpo-bench-pgbench-") as tmp:
        script = Path(tmp) / "report.sql"
        script.write_text(REPORT_SQL)
        cmd += ["-f", str(script), str(u.database)]
        say("running " + " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 120)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed ({result.returncode}):\n{output}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output) or re.search(r"tps = ([\d.]+)", output)
    latency = re.search(r"latency average = ([\d.]+) ms", output)
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    if tps is None:
        raise RuntimeError(f"no tps in pgbench's output:\n{output}")
    return PgbenchResult(
        float(tps.group(1)),
        float(latency.group(1)) if latency else math.nan,
        int(processed.group(1)) if processed else 0,
        output,
    )


# -- the run --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_database_argument(parser)
    parser.add_argument("--workers", type=int, default=32, help="concurrent simulated workers, and pgbench clients (default %(default)s)")
    parser.add_argument("--seconds", type=int, default=20, help="measured duration of each side (default %(default)s)")
    parser.add_argument("--api-processes", type=int, default=1, help="uvicorn processes of hpo serve (HPO_API_WORKERS; default %(default)s)")
    parser.add_argument("--report-batches", type=int, help="report batches in flight per API process (HPO_REPORT_BATCHES; default the service's)")
    parser.add_argument("--steps", type=int, default=200, help="length of the earlier trials' curves (default %(default)s)")
    parser.add_argument("--prefill", type=int, default=100, help="earlier COMPLETE trials in the study (default %(default)s)")
    parser.add_argument("--pgbench-threads", type=int, default=2, help="pgbench -j (default %(default)s)")
    parser.add_argument("--pgbench", default=None, help="the pgbench binary (default: PATH, then /usr/lib/postgresql/*/bin)")
    parser.add_argument(
        "--client", choices=("lean", "httpx"), default="lean",
        help="the simulated workers' HTTP client for reports: a minimal HTTP/1.1 one, or httpx (default %(default)s)",
    )
    parser.add_argument("--tiny", action="store_true", help="a smoke run: --seconds 2 --workers 4 --prefill 10")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seconds, args.workers, args.prefill = 2, 4, 10
    if min(args.workers, args.seconds, args.steps, args.api_processes) < 1:
        parser.error("--workers, --seconds, --steps and --api-processes must be >= 1")

    import httpx

    pgbench = find_pgbench(args.pgbench)
    workers = f"{args.workers} worker{'s' if args.workers != 1 else ''}"
    processes = f"{args.api_processes} API process{'es' if args.api_processes > 1 else ''}"
    print(machine_line(args.database_url))
    print(
        f"throughput: {workers} for {args.seconds} s, each holding one trial and reporting steps 1, 2, 3, ...; "
        f"hpo serve with {processes} (uvicorn); report client: {args.client}; study: random sampler, MedianPruner(5, 2), {args.prefill} earlier "
        f"trials of {args.steps} steps; pgbench: "
        + (f"{pgbench} -n -c {args.workers} -j {args.pgbench_threads} -T {args.seconds}" if pgbench else "NOT FOUND")
    )
    sys.stdout.flush()
    with throwaway_database(args.database_url) as url:
        tokens = make_tokens(url, TEAM, "admin", "worker")
        env = {"HPO_REPORT_BATCHES": str(args.report_batches)} if args.report_batches else {}
        with api_server(url, processes=args.api_processes, **env) as server:
            with server.client(tokens["admin"]) as admin:
                admin.timeout = httpx.Timeout(120)
                spec = definition(STUDY, "random", 0, BENCH_PRUNER, 1_000_000, args.steps, max_concurrent=args.workers)
                created = create_study(admin, spec)
            storage = optuna_storage(url)
            try:
                trials = [t for t in earlier_trials(args.prefill * 2, args.steps, seed=1) if t.value is not None][: args.prefill]
                prefill(storage, created["optuna_name"], trials)
            finally:
                storage.engine.dispose()
            say(f"service: {workers} for {args.seconds} s")
            server_pid = server.process.pid  # type: ignore[union-attr]
            cpu_server, cpu_self = _cpu_seconds(server_pid), _own_cpu()
            load, seconds = asyncio.run(_service_load(server.url, tokens["worker"], args.workers, args.seconds, args.client))
            cpu_server, cpu_self = _cpu_seconds(server_pid) - cpu_server, _own_cpu() - cpu_self
        service_rate = load.acked / seconds

        bench: PgbenchResult | None = None
        if pgbench:
            pgbench_tables(url, args.workers)
            say(f"pgbench: {args.workers} clients for {args.seconds} s")
            bench = run_pgbench(pgbench, url, args.workers, args.pgbench_threads, args.seconds)
        else:
            print("pgbench: NOT FOUND (install postgresql-client, or pass --pgbench PATH); the ratio is n/a")

    print()
    print_table(
        ["side", "clients", "seconds", "per second", "done", "latency p50 ms", "latency p99 ms", "errors", "notes"],
        [
            [
                f"service ({processes})",
                args.workers, seconds, f"{service_rate:.1f} reports/s", load.acked,
                ms(percentile(load.latencies, 50)), ms(percentile(load.latencies, 99)),
                sum(load.errors.values()),
                f"highest step {load.max_step}, {load.pruned} prune answers; CPU s: API {cpu_server:.1f}, load generator {cpu_self:.1f}",
            ],
            [
                "pgbench (insert + heartbeat update)",
                args.workers, args.seconds,
                f"{bench.tps:.1f} tx/s" if bench else "n/a",
                bench.transactions if bench else "n/a",
                f"{bench.latency_ms:.2f} (mean)" if bench else "n/a",
                "n/a", 0 if bench else "n/a",
                f"-j {args.pgbench_threads}" if bench else "pgbench not found",
            ],
        ],
    )
    if load.errors:
        print(f"service errors: {dict(load.errors)}")
    print()
    vs = f"pgbench {bench.tps:.0f} tx/s = {ratio(service_rate, bench.tps)}" if bench else "pgbench n/a (not found) = n/a"
    print(f"SUMMARY throughput: service {service_rate:.0f} reports/s ({workers}, {processes}) vs {vs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
