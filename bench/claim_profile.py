#!/usr/bin/env python
"""Where a TPE claim's time goes, without HTTP: the service's way of sampling a new trial against
raw Optuna's `ask`, in one process, on one PostgreSQL, trial by trial.

    .venv/bin/python -m bench.claim_profile                   # --prefill 100,10000 --trials 20
    .venv/bin/python -m bench.claim_profile --profile         # and cProfile's top functions of each way
    .venv/bin/python -m bench.claim_profile --tiny            # seconds; what tests/test_bench.py runs

Three ways of getting a trial with sampled parameters and finishing it, each on its own study
holding the same --prefill earlier trials (bench/coordination.py's: 80 % complete, 20 % pruned,
20 steps), each TPESampler(seed) (Optuna 5's multivariate default) and the same two parameters:

- raw: one `optuna.load_study` for the run, then `study.ask()` + 2 x suggest_float + `tell`;
  the sampler lives as long as the study, as in a notebook;
- service, fresh: per trial, what claims.try_claim does: `factories.load_study` with a sampler
  rebuilt for the claim (seed + trials claimed), a new trial, `suggest`, then `tell`;
- service, kept: the same, with the study's search spaces carried from claim to claim
  (`optuna_adapter.internals.keep_search_spaces`, as try_claim now does).

Prints the p50 per trial of each and the ratios, and with --profile the functions that take the
most cumulative time in 5 more trials of each way. Ends with one `SUMMARY claim_profile:` line.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import add_database_argument, optuna_storage, throwaway_database  # noqa: E402
from bench.coordination import HIGH_DROPOUT, HIGH_LR, LOW_DROPOUT, LOW_LR, analyze, earlier_trials, prefill  # noqa: E402


def spec(seed: int) -> Any:
    from service.spec import StudySpec

    return StudySpec.model_validate({
        "name": "claim-profile",
        "workload": {"model": "mlp", "dataset": "digits", "epochs": 20},
        "space": {
            "lr": {"type": "float", "low": LOW_LR, "high": HIGH_LR, "log": True},
            "dropout": {"type": "float", "low": LOW_DROPOUT, "high": HIGH_DROPOUT},
        },
        "sampler": {"kind": "tpe", "seed": seed},
        "budget": {"n_trials": 1_000_000},
    })


def ways(storage: Any, size: int, seed: int) -> dict[str, Callable[[int], None]]:
    import optuna

    from service.engine.factories import load_study, suggest

    the_spec = spec(seed)
    raw = optuna.load_study(study_name=f"raw-{size}", storage=storage, sampler=optuna.samplers.TPESampler(seed=seed))

    def raw_way(i: int) -> None:
        trial = raw.ask()
        trial.suggest_float("lr", LOW_LR, HIGH_LR, log=True)
        trial.suggest_float("dropout", LOW_DROPOUT, HIGH_DROPOUT)
        raw.tell(trial, 0.5)

    def service_way(name: str, kept: dict[str, Any] | None) -> Callable[[int], None]:
        study_id = storage.get_study_id_from_name(name)

        def claim(i: int) -> None:
            study = load_study(storage, name, the_spec, n_claimed=size + i, search_spaces=kept)
            trial = optuna.trial.Trial(study, storage.create_new_trial(study_id))
            suggest(trial, the_spec)
            study.tell(trial, 0.5)

        return claim

    return {"raw": raw_way, "service, fresh": service_way(f"fresh-{size}", None), "service, kept": service_way(f"kept-{size}", {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_database_argument(parser)
    parser.add_argument("--prefill", default="100,10000", help="earlier trials per study, comma-separated (default %(default)s)")
    parser.add_argument("--trials", type=int, default=20, help="timed trials per way and size (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions for each way")
    parser.add_argument("--tiny", action="store_true", help="--prefill 10,50 --trials 3")
    args = parser.parse_args(argv)
    if args.tiny:
        args.prefill, args.trials = "10,50", 3
    sizes = sorted({int(x) for x in args.prefill.split(",") if x.strip()})

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    print(f"claim_profile: TPESampler(seed={args.seed}), 2 parameters, {args.trials} timed trials per way after 1 warm-up; prefill {sizes}")
    p50: dict[tuple[int, str], float] = {}
    with throwaway_database(args.database_url) as url:
        rdb = optuna_storage(url)
        storage = optuna.storages.get_storage(rdb)  # Optuna's per-process cache, as the service's
        for size in sizes:
            for prefix in ("raw", "fresh", "kept"):
                optuna.create_study(study_name=f"{prefix}-{size}", storage=storage)
                prefill(rdb, f"{prefix}-{size}", earlier_trials(size, 20, seed=args.seed + size))
        analyze(rdb)
        for size in sizes:
            by_way = ways(storage, size, args.seed)
            times: dict[str, list[float]] = {name: [] for name in by_way}
            for i in range(args.trials + 1):
                for name, way in by_way.items():  # trial by trial, so drift touches every way alike
                    t = time.perf_counter()
                    way(i)
                    if i > 0:
                        times[name].append(time.perf_counter() - t)
            for name, values in times.items():
                p50[size, name] = statistics.median(values)
                print(f"@{size:<6} {name:<15} p50 {p50[size, name] * 1e3:8.1f} ms per trial")
            if args.profile:
                for name, way in by_way.items():
                    profile = cProfile.Profile()
                    profile.enable()
                    for i in range(5):
                        way(args.trials + 1 + i)
                    profile.disable()
                    print(f"\n--- @{size} {name}: 5 trials, by cumulative time")
                    pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(18)
        rdb.engine.dispose()
    cells = []
    for size in sizes:
        raw = p50[size, "raw"]
        cells.append(f"@{size} fresh {p50[size, 'service, fresh'] / raw:.2f}x, kept {p50[size, 'service, kept'] / raw:.2f}x")
    print(f"SUMMARY claim_profile: service/raw per trial (TPE, no HTTP) {'; '.join(cells)}", flush=True)
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    sys.exit(main())
