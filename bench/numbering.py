#!/usr/bin/env python
"""What a new trial costs the storage as its study grows: Optuna's RDBStorage, which numbers the
trial by counting the study's earlier trials, against the service's NumberingRDBStorage, which
reads the previous trial's number through the (study_id, trial_id) index (migration 0007).

    .venv/bin/python -m bench.numbering            # studies of 100, 10,000 and 100,000 trials
    .venv/bin/python -m bench.numbering --tiny     # 10 and 1000 (the test)

Both create trials (`_create_new_trial`: the study's row lock, the insert, the number, the
commit) in the same studies of a throwaway database, taking turns, after the earlier trials were
bulk-inserted and the table analyzed. Only the trial's creation is timed: in a claim it comes
with the token, the lease, the view and the sampler (bench/coordination.py).

Prints a table and ONE summary line:

    SUMMARY numbering: new trial p50 @100000 / @100: optuna 5.6x, service 1.2x
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    add_database_argument,
    libpq_url,
    machine_line,
    ms,
    optuna_storage,
    print_table,
    ratio,
    throwaway_database,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_database_argument(parser)
    parser.add_argument("--sizes", default="100,10000,100000", help="earlier trials per study (default %(default)s)")
    parser.add_argument("--trials", type=int, default=60, help="new trials per side and size (default %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="--sizes 10,1000 --trials 6")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes, args.trials = "10,1000", 6
    sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    if len(sizes) < 2 or args.trials < 2:
        parser.error("need two sizes or more and --trials >= 2")

    import optuna
    import psycopg

    from service.engine.optuna_adapter.numbering import NumberingRDBStorage

    with throwaway_database(args.database_url) as url:
        print(machine_line(url))
        print(f"numbering: {args.trials} new trials per side in studies of {', '.join(map(str, sizes))} earlier trials")
        plain = optuna_storage(url)
        ours = NumberingRDBStorage(url)
        sides = {"optuna": plain, "service": ours}
        p50: dict[tuple[str, int], float] = {}
        for n in sizes:
            study_id = optuna.create_study(storage=plain, study_name=f"numbering-{n}")._study_id
            with psycopg.connect(libpq_url(url)) as conn:
                conn.execute(
                    "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                    "SELECT g, %s, 'COMPLETE', now(), now() FROM generate_series(0, %s) g",
                    (study_id, n - 1),
                )
                conn.commit()
                conn.execute("ANALYZE trials")
            times: dict[str, list[float]] = {name: [] for name in sides}
            for i in range(args.trials):
                order = list(sides.items()) if i % 2 == 0 else list(reversed(sides.items()))
                for name, storage in order:
                    t0 = time.perf_counter()
                    storage._create_new_trial(study_id)
                    times[name].append(time.perf_counter() - t0)
            numbers = [t.number for t in sorted(plain.get_all_trials(study_id, deepcopy=False), key=lambda t: t._trial_id)]
            if numbers != list(range(n + 2 * args.trials)):
                print(f"numbering: the study of {n} trials is not numbered 0, 1, 2, ...", file=sys.stderr)
                return 1
            warm = times["optuna"][1:], times["service"][1:]  # the first of each fills caches
            for name, t in zip(sides, warm):
                p50[(name, n)] = statistics.median(t)
        plain.engine.dispose()
        ours.engine.dispose()

    rows = [[n, ms(p50[("optuna", n)]), ms(p50[("service", n)]), ratio(p50[("service", n)], p50[("optuna", n)])] for n in sizes]
    print_table(["earlier trials", "optuna new trial p50 ms", "service new trial p50 ms", "service/optuna"], rows)
    lo, hi = sizes[0], sizes[-1]
    print(
        f"SUMMARY numbering: new trial p50 @{hi} / @{lo}: "
        f"optuna {ratio(p50[('optuna', hi)], p50[('optuna', lo)])}, service {ratio(p50[('service', hi)], p50[('service', lo)])}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
