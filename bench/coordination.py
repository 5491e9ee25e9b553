#!/usr/bin/env python
"""What the service adds to a trial's coordination, against raw Optuna on the same PostgreSQL.

    .venv/bin/python -m bench.coordination                       # --prefill 100,10000 --trials 30, random and tpe
    .venv/bin/python -m bench.coordination --sampler tpe         # one sampler
    .venv/bin/python -m bench.coordination --tiny                # seconds; what tests/test_bench.py runs

One trial's coordination is: get a trial with sampled parameters, report 20 intermediate values
(asking after each whether to prune), finish it. Two sides do exactly that, one after the other,
trial by trial (alternating which goes first), in one throwaway database; the timed trials go
round robin over the prefill sizes too, so that a drift in the machine's speed touches every
figure alike:

- service: a real `hpo serve` (one uvicorn process) over real HTTP (httpx, keep-alive, a worker
  token): POST claim, 20 x POST report, POST finish. Nothing trains: the script speaks the
  worker protocol itself, with synthetic loss values.
- raw: `optuna.create_study(storage=RDBStorage(url))` in this process: study.ask() + suggest
  (the same two parameters), 20 x (trial.report + trial.should_prune), study.tell.

Both use the same sampler and the same pruner (MedianPruner(n_startup_trials=5, n_warmup_steps=2),
DESIGN.md's), and both see the same synthetic values. The default run measures twice, on studies
of their own: with RandomSampler(seed), where the figure is the coordination alone, and with
TPESampler(seed) (Optuna 5's default, multivariate), which the service rebuilds for every claim
and raw Optuna keeps for the study's life; `--sampler random` or `--sampler tpe` runs one.
A trial always makes all its reports (a "prune" answer is noted and the trial finishes as
pruned), so every trial does the same work.

Each side is measured on a study that already holds N earlier trials (--prefill, default 100
and 10,000), the same trials on both sides: made with optuna.trial.create_trial (curves of 20
intermediate values; 80% COMPLETE, 20% PRUNED part-way), the first 20 added with
study.add_trials and the rest bulk-copied into Optuna's tables with the same rows (add_trials
costs tens of milliseconds per trial: 2 x 10,000 of them would take longer than the benchmark),
then read back and checked through Optuna. The service's study is its Optuna study
`<team>/<name>`, with budget.n_trials = prefill + measured trials + a margin.

Per side and prefill: per-trial time (median, p99), and the calls inside it (claim or ask,
report, finish or tell). The first --warmup trials of each side are not counted (they fill the
caches of a freshly started process: a long-running service has them warm).

Then the pruning parity check: the same sequence of synthetic trials goes through the service
and through raw Optuna on fresh studies, each trial stopping at its side's first "prune", for
two MedianPruner settings; every decision (one per report) is compared, together with the
decisions of the timed trials above. It prints `prune decisions identical: K/N`.

Output: a Markdown table, the ratios, and one line starting with `SUMMARY coordination:`.
Exit status 0 when everything ran (whatever the figures are), 1 when a pruning decision differed.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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

TEAM = "bench"
LOW_LR, HIGH_LR = 1e-5, 1.0
LOW_DROPOUT, HIGH_DROPOUT = 0.2, 0.5
BENCH_PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 2, "interval_steps": 1, "n_min_trials": 1}
# The parity check also runs a pruner with warm-up, interval and a minimum of trials.
OTHER_PRUNER = {"n_startup_trials": 3, "n_warmup_steps": 2, "interval_steps": 2, "n_min_trials": 3}
# Trials added through Optuna's own add_trials before the bulk copy.
VIA_OPTUNA = 20


def say(message: str) -> None:
    log("coordination", message)


# -- the study, on both sides ---------------------------------------------------------------------


def definition(
    name: str, sampler: str, seed: int, pruner: dict[str, int], n_trials: int, epochs: int, max_concurrent: int = 4
) -> dict[str, Any]:
    """The service's study: two parameters (so sampling happens), the digits MLP (never trained)."""
    return {
        "name": name,
        "direction": "minimize",
        "workload": {"model": "mlp", "dataset": "digits", "epochs": epochs},
        "space": {
            "lr": {"type": "float", "low": LOW_LR, "high": HIGH_LR, "log": True},
            "dropout": {"type": "float", "low": LOW_DROPOUT, "high": HIGH_DROPOUT},
        },
        "sampler": {"kind": sampler, "seed": seed},
        "pruner": {"kind": "median", **pruner},
        "budget": {"n_trials": n_trials, "max_concurrent": max_concurrent, "max_retries": 0},
    }


def raw_study(storage: Any, name: str, sampler: str, seed: int, pruner: dict[str, int]) -> Any:
    import optuna

    samplers = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        sampler=samplers[sampler](seed=seed),
        pruner=optuna.pruners.MedianPruner(**pruner),
    )


def distributions() -> dict[str, Any]:
    from optuna.distributions import FloatDistribution

    return {
        "lr": FloatDistribution(LOW_LR, HIGH_LR, log=True),
        "dropout": FloatDistribution(LOW_DROPOUT, HIGH_DROPOUT),
    }


def curve(rng: random.Random, steps: int) -> list[float]:
    """A synthetic validation-loss curve: a noisy decay towards a per-trial floor."""
    start, floor, rate = rng.uniform(1.5, 2.5), rng.uniform(0.05, 1.2), rng.uniform(0.1, 0.6)
    return [max(1e-4, floor + (start - floor) * math.exp(-rate * s) + rng.gauss(0, 0.03)) for s in range(1, steps + 1)]


# -- prefill --------------------------------------------------------------------------------------


def earlier_trials(n: int, steps: int, seed: int) -> list[Any]:
    """n finished trials, 80% COMPLETE (all steps), 20% PRUNED part-way; the objective is the best
    (lowest) validation loss, as the service's workers report it."""
    from optuna.trial import TrialState, create_trial

    rng = random.Random(seed)
    dists = distributions()
    t0 = datetime.now() - timedelta(days=1)
    out = []
    for i in range(n):
        values = curve(rng, steps)
        params = {"lr": 10 ** rng.uniform(math.log10(LOW_LR), math.log10(HIGH_LR)), "dropout": rng.uniform(LOW_DROPOUT, HIGH_DROPOUT)}
        pruned = rng.random() < 0.2 and steps > 1
        if pruned:
            values = values[: rng.randint(1, steps - 1)]
        trial = create_trial(
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
            value=None if pruned else min(values),
            params=params,
            distributions=dists,
            intermediate_values={s: v for s, v in enumerate(values, 1)},
        )
        trial.datetime_start = t0 + timedelta(seconds=2 * i)
        trial.datetime_complete = trial.datetime_start + timedelta(seconds=1)
        out.append(trial)
    return out


def prefill(storage: Any, optuna_name: str, trials: Sequence[Any]) -> None:
    """The trials into the (empty) Optuna study: the first VIA_OPTUNA through study.add_trials, the
    rest as the same rows copied in bulk, then all read back through Optuna and compared."""
    import optuna
    import psycopg
    from optuna.distributions import distribution_to_json

    study = optuna.load_study(study_name=optuna_name, storage=storage)
    head, rest = list(trials[:VIA_OPTUNA]), list(trials[VIA_OPTUNA:])
    study.add_trials(head)
    study_id = study._study_id
    if rest:
        buffers = {name: io.StringIO() for name in ("trials", "params", "values", "intermediate")}
        with psycopg.connect(libpq_url(storage.url)) as conn:
            ids = [r[0] for r in conn.execute("SELECT nextval('trials_trial_id_seq') FROM generate_series(1, %s)", (len(rest),))]
            for number, (trial_id, t) in enumerate(zip(sorted(ids), rest), start=len(head)):
                buffers["trials"].write(
                    f"{trial_id}\t{number}\t{study_id}\t{t.state.name}\t{t.datetime_start.isoformat(' ')}\t{t.datetime_complete.isoformat(' ')}\n"
                )
                for name, value in t.params.items():
                    dist = t.distributions[name]
                    buffers["params"].write(f"{trial_id}\t{name}\t{dist.to_internal_repr(value)!r}\t{distribution_to_json(dist)}\n")
                if t.value is not None:
                    buffers["values"].write(f"{trial_id}\t0\t{t.value!r}\tFINITE\n")
                for step, value in t.intermediate_values.items():
                    buffers["intermediate"].write(f"{trial_id}\t{step}\t{value!r}\tFINITE\n")
            columns = {
                "trials": "trials (trial_id, number, study_id, state, datetime_start, datetime_complete)",
                "params": "trial_params (trial_id, param_name, param_value, distribution_json)",
                "values": "trial_values (trial_id, objective, value, value_type)",
                "intermediate": "trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)",
            }
            with conn.cursor() as cur:
                for key, target in columns.items():
                    with cur.copy(f"COPY {target} FROM STDIN") as copy:
                        copy.write(buffers[key].getvalue())
            conn.commit()
    # Read back through Optuna (a fresh storage: no cache) and compare with what was meant.
    check = optuna_storage(storage.url)
    try:
        stored = check.get_all_trials(study_id, deepcopy=False)
    finally:
        check.engine.dispose()
    if len(stored) != len(trials):
        raise RuntimeError(f"prefill: {len(stored)} trials in {optuna_name}, expected {len(trials)}")
    for got, want in zip(stored, trials):
        same = (
            got.state == want.state
            and got.value == want.value
            and got.intermediate_values == want.intermediate_values
            and all(math.isclose(got.params[k], v, rel_tol=1e-12) for k, v in want.params.items())
        )
        if not same:
            raise RuntimeError(f"prefill: trial {got.number} of {optuna_name} reads back differently: {got} vs {want}")


def analyze(storage: Any) -> None:
    """Statistics for the bulk-copied rows. A study that grew to 10,000 trials over days was
    analyzed by autovacuum many times on the way; right after the copy, the planner would still
    plan Optuna's queries and the service's for the empty tables the copy started from, on both
    sides."""
    import psycopg

    with psycopg.connect(libpq_url(storage.url), autocommit=True) as conn:
        conn.execute("ANALYZE")


# -- one trial on each side -----------------------------------------------------------------------


@dataclass
class TrialTiming:
    total: float
    start: float  # claim, or ask + suggest
    reports: list[float]  # each report (raw: report + should_prune)
    end: float  # finish, or tell
    decisions: list[bool]


def service_trial(client: Any, study: str, values: Sequence[float], stop_at_prune: bool = False) -> TrialTiming:
    t0 = time.perf_counter()
    response = client.post("/api/v1/trials/claim", json={"worker_id": "bench-coordination", "studies": [study]})
    if response.status_code != 200:
        raise RuntimeError(f"claim in {study} answered {response.status_code}: {response.text}")
    assignment = response.json()
    t1 = time.perf_counter()
    trial_id, lease_id = assignment["trial_id"], assignment["lease_id"]
    reports, decisions = [], []
    for step, value in enumerate(values, 1):
        r0 = time.perf_counter()
        response = client.post(f"/api/v1/trials/{trial_id}/report", json={"lease_id": lease_id, "step": step, "value": value})
        if response.status_code != 200:
            raise RuntimeError(f"report answered {response.status_code}: {response.text}")
        decisions.append(bool(response.json()["prune"]))
        reports.append(time.perf_counter() - r0)
        if stop_at_prune and decisions[-1]:
            break
    t2 = time.perf_counter()
    body: dict[str, Any] = {"lease_id": lease_id, "state": "pruned"} if any(decisions) else {
        "lease_id": lease_id, "state": "complete", "value": min(values)
    }
    response = client.post(f"/api/v1/trials/{trial_id}/finish", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"finish answered {response.status_code}: {response.text}")
    t3 = time.perf_counter()
    return TrialTiming(t3 - t0, t1 - t0, reports, t3 - t2, decisions)


def raw_trial(study: Any, values: Sequence[float], stop_at_prune: bool = False) -> TrialTiming:
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    trial = study.ask()
    trial.suggest_float("lr", LOW_LR, HIGH_LR, log=True)
    trial.suggest_float("dropout", LOW_DROPOUT, HIGH_DROPOUT)
    t1 = time.perf_counter()
    reports, decisions = [], []
    for step, value in enumerate(values, 1):
        r0 = time.perf_counter()
        trial.report(value, step)
        decisions.append(trial.should_prune())
        reports.append(time.perf_counter() - r0)
        if stop_at_prune and decisions[-1]:
            break
    t2 = time.perf_counter()
    if any(decisions):
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, min(values))
    t3 = time.perf_counter()
    return TrialTiming(t3 - t0, t1 - t0, reports, t3 - t2, decisions)


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Side:
    timings: list[TrialTiming] = field(default_factory=list)

    def stat(self, what: str, q: float) -> float:
        if what == "report":
            return percentile([r for t in self.timings for r in t.reports], q)
        return percentile([getattr(t, what) for t in self.timings], q)

    @property
    def pruned(self) -> int:
        return sum(1 for t in self.timings if any(t.decisions))


@dataclass
class Parity:
    same: int = 0
    total: int = 0
    prunes: int = 0  # "prune" answers among the identical decisions
    first_difference: str | None = None

    def compare(self, label: str, a: Sequence[bool], b: Sequence[bool]) -> None:
        for step in range(max(len(a), len(b))):
            x = a[step] if step < len(a) else None
            y = b[step] if step < len(b) else None
            self.total += 1
            if x == y:
                self.same += 1
                self.prunes += bool(x)
            elif self.first_difference is None:
                self.first_difference = f"{label} step {step + 1}: service {x}, optuna {y}"


def measure(
    client: Any, storage: Any, samplers: Sequence[str], sizes: Sequence[int], args: argparse.Namespace, parity: Parity
) -> dict[tuple[str, int], tuple[Side, Side]]:
    """Every (sampler, prefill size) cell's study pair is made and filled first; then the timed
    trials go round robin over cells and sides, so a drift in the machine's speed touches every
    cell alike."""
    n_total = args.warmup + args.trials
    studies: dict[tuple[str, int], tuple[str, Any, random.Random]] = {}
    for sampler in samplers:
        for n in sizes:
            name = f"coord-{sampler}-{n}"
            created = create_study(client, definition(name, sampler, args.seed, BENCH_PRUNER, n + n_total + 10, args.reports))
            study = raw_study(storage, f"raw/{name}", sampler, args.seed, BENCH_PRUNER)
            earlier = earlier_trials(n, args.reports, seed=args.seed + n)
            t = time.perf_counter()
            prefill(storage, created["optuna_name"], earlier)
            prefill(storage, study.study_name, earlier)
            say(f"prefilled {n} trials into {created['optuna_name']} and {study.study_name} in {time.perf_counter() - t:.1f}s")
            studies[sampler, n] = (name, study, random.Random(args.seed * 7919 + n))
    analyze(storage)
    results = {cell: (Side(), Side()) for cell in studies}
    say(f"timing {n_total} trials per side and cell")
    for i in range(n_total):
        for cell, (name, study, rng) in studies.items():
            values = curve(rng, args.reports)
            # Alternate which side goes first, so neither always runs on a machine the other warmed.
            if i % 2 == 0:
                s, r = service_trial(client, name, values), raw_trial(study, values)
            else:
                r, s = raw_trial(study, values), service_trial(client, name, values)
            parity.compare(f"{name} trial {i}", s.decisions, r.decisions)
            if i >= args.warmup:
                results[cell][0].timings.append(s)
                results[cell][1].timings.append(r)
    return results


def prune_parity(client: Any, storage: Any, sampler: str, args: argparse.Namespace, parity: Parity) -> None:
    """Fresh studies, each trial stopping at its side's first prune, as a real worker does."""
    for k, pruner in enumerate((BENCH_PRUNER, OTHER_PRUNER)):
        name = f"parity-{k}"
        create_study(client, definition(name, sampler, args.seed, pruner, args.parity_trials + 10, args.reports))
        study = raw_study(storage, f"raw/{name}", sampler, args.seed, pruner)
        rng = random.Random(args.seed * 104729 + k)
        for i in range(args.parity_trials):
            values = curve(rng, args.reports)
            s = service_trial(client, name, values, stop_at_prune=True)
            r = raw_trial(study, values, stop_at_prune=True)
            parity.compare(f"{name} trial {i}", s.decisions, r.decisions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_database_argument(parser)
    parser.add_argument("--prefill", default="100,10000", help="earlier trials in the study, comma-separated (default %(default)s)")
    parser.add_argument("--trials", type=int, default=30, help="timed trials per side and prefill (default %(default)s)")
    parser.add_argument("--reports", type=int, default=20, help="reports per trial (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="trials per side and prefill not counted (default %(default)s)")
    parser.add_argument("--sampler", choices=("random", "tpe"), action="append", help="both sides' sampler (repeatable; default random and tpe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parity-trials", type=int, default=60, help="trials per pruner setting in the parity check (default %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: --prefill 10,50 --trials 3 --reports 3 --warmup 1 --parity-trials 12")
    args = parser.parse_args(argv)
    if args.tiny:
        args.prefill, args.trials, args.reports, args.warmup, args.parity_trials = "10,50", 3, 3, 1, 12
    sizes = sorted({int(x) for x in args.prefill.split(",") if x.strip()})
    samplers = list(dict.fromkeys(args.sampler or ["random", "tpe"]))
    if not sizes or args.trials < 1 or args.reports < 1:
        parser.error("need at least one prefill size, --trials >= 1 and --reports >= 1")

    import httpx

    print(machine_line(args.database_url))
    print(
        f"coordination: claim + {args.reports} reports + finish, {args.trials} timed trials per side after {args.warmup} warm-up; "
        f"samplers {', '.join(f'{x}(seed={args.seed})' for x in samplers)}; MedianPruner({', '.join(f'{k}={v}' for k, v in BENCH_PRUNER.items())}); "
        f"service: 1 uvicorn process over HTTP; raw: optuna.create_study(storage=RDBStorage(url))"
    )
    sys.stdout.flush()
    parity = Parity()
    with throwaway_database(args.database_url) as url:
        tokens = make_tokens(url, TEAM, "admin", "worker")
        storage = optuna_storage(url)
        with api_server(url) as server:
            with server.client(tokens["admin"]) as admin, server.client(tokens["worker"]) as worker:
                admin.timeout = worker.timeout = httpx.Timeout(120)
                client = _Both(admin, worker)
                results = measure(client, storage, samplers, sizes, args, parity)
                say("pruning parity check")
                prune_parity(client, storage, samplers[0], args, parity)
        storage.engine.dispose()

    rows = []
    for (sampler, n), (service, raw) in results.items():
        for label, side in (("service", service), ("raw optuna", raw)):
            rows.append([
                sampler, n, label, len(side.timings),
                ms(side.stat("total", 50)), ms(side.stat("total", 99)),
                ms(side.stat("start", 50)), ms(side.stat("report", 50)), ms(side.stat("report", 99)), ms(side.stat("end", 50)),
                side.pruned,
            ])
    print()
    print_table(
        ["sampler", "earlier trials", "side", "trials", "per trial p50 ms", "per trial p99 ms", "claim/ask p50 ms",
         "report p50 ms", "report p99 ms", "finish/tell p50 ms", "pruned"],
        rows,
    )
    print()
    lo, hi = sizes[0], sizes[-1]
    for (sampler, n), (service, raw) in results.items():
        print(f"{sampler}: service/raw per-trial p50 @{n} = {ratio(service.stat('total', 50), raw.stat('total', 50))}; "
              f"per-trial p99 = {ratio(service.stat('total', 99), raw.stat('total', 99))}; "
              f"claim/ask p50 = {ratio(service.stat('start', 50), raw.stat('start', 50))}; "
              f"report p50 = {ratio(service.stat('report', 50), raw.stat('report', 50))}")
    for sampler in samplers:
        s_lo, r_lo = results[sampler, lo]
        s_hi, r_hi = results[sampler, hi]
        print(f"{sampler}: growth @{hi} / @{lo}: service report p50 {ratio(s_hi.stat('report', 50), s_lo.stat('report', 50))}, "
              f"service claim p50 {ratio(s_hi.stat('start', 50), s_lo.stat('start', 50))}, "
              f"service per-trial p50 {ratio(s_hi.stat('total', 50), s_lo.stat('total', 50))}, "
              f"raw report p50 {ratio(r_hi.stat('report', 50), r_lo.stat('report', 50))}, "
              f"raw per-trial p50 {ratio(r_hi.stat('total', 50), r_lo.stat('total', 50))}")
    print(f"prune decisions identical: {parity.same}/{parity.total}")
    print(f"  of which {parity.prunes} said prune and {parity.same - parity.prunes} said continue")
    if parity.first_difference:
        print(f"first difference: {parity.first_difference}")

    def per_trial(sampler: str) -> str:
        cells = [f"@{n} = {ratio(results[sampler, n][0].stat('total', 50), results[sampler, n][1].stat('total', 50))}" for n in sizes]
        return f"{sampler} " + ", ".join(cells)

    s_lo, s_hi = results[samplers[0], lo][0], results[samplers[0], hi][0]
    print(
        f"SUMMARY coordination: service/raw per-trial p50 {'; '.join(per_trial(x) for x in samplers)}"
        + f"; service report p50 @{hi} / @{lo} = {ratio(s_hi.stat('report', 50), s_lo.stat('report', 50))} ({samplers[0]})"
        + f"; prune decisions identical {parity.same}/{parity.total}"
    )
    return 0 if parity.same == parity.total else 1


class _Both:
    """Study creation with the admin token, the worker protocol with the worker token."""

    def __init__(self, admin: Any, worker: Any) -> None:
        self.admin, self.worker = admin, worker

    def post(self, path: str, **kwargs: Any) -> Any:
        return (self.admin if path == "/api/v1/studies" else self.worker).post(path, **kwargs)


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    sys.exit(main())
