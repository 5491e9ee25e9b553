#!/usr/bin/env python
"""What median pruning saves: total epochs trained and best validation loss, with the demo's
median pruner against no pruning, on the same sampler seeds.

    .venv/bin/python -m bench.pruning                 # demo size: 40 trials x 15 epochs, seeds 0 1 2
    .venv/bin/python -m bench.pruning --tiny          # 6 trials x 3 epochs, seed 0 (for the tests)
    .venv/bin/python -m bench.pruning --seeds $(seq 100 119) --jobs 2 \
        --pruner median:5:2 --pruner median:5:6 --pruner percentile:25:5:2   # several pruners, one run

`--pruner` (repeatable) compares other settings of the service's pruners with the same no-pruning
arm: `median[:STARTUP:WARMUP]` or `percentile:P[:STARTUP:WARMUP]`, each built from a study
definition by the service's `build_pruner`. The summary line is the first pruner's. To try a
pruner the service does not offer (yet), `optuna:CLASS[:KEY=VALUE,...]` builds one of
`optuna.pruners` directly, e.g. `optuna:SuccessiveHalvingPruner:min_resource=1,reduction_factor=2`
(numbers only as values).

The study is exactly the demo's (`service.cli.up.demo_definition`): the digits MLP, its search
space sampled define-by-run by the service's own `service.engine.factories.suggest`, TPE, and the
pruner the service builds from the spec (`build_pruner`: median, n_startup_trials=5,
n_warmup_steps=2), against `optuna.pruners.NopPruner`. Each trial is trained in this process by
the real built-in trainer (`worker.trainer.train(..., "cpu")`), reporting the validation loss
after every epoch (step = epoch) as a worker does; the objective is the best validation loss over
the trial's epochs (README, "The objective"); a run the divergence guard stops is pruned, as the
worker does, in both arms. Optuna runs in-process on in-memory storage: no service, no database,
so what is measured is the pruner alone.

The one difference from the service: the service rebuilds the sampler for every claim with the
seed advanced by the number of claims (`build_sampler`), where this script keeps one
`TPESampler(seed=s)` per study; both arms of a seed start from the same sampler state, and their
trials are identical until the first one is pruned.

"Epochs" counts the epochs actually trained (a pruned trial's epochs up to its pruning, a
diverged one's up to the epoch the guard stopped). "Best" is the best value of the study's
COMPLETE trials (`study.best_value`, what the service reports as the best trial).

Prints a table per seed and ONE summary line:

    SUMMARY pruning: epochs pruned/unpruned = 0.38x; best loss pruned/unpruned = 1.01x (mean over 3 seeds)
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# As a worker trains (worker/cli.py): MKL's strict reproducibility, so that a study's numbers do
# not depend on where its tensors happen to be allocated. Without it the trials' last bits, and so
# the studies' TPE histories, differ from the workers' (docs/benchmarks.md, section c).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import optuna  # noqa: E402
import torch  # noqa: E402

from service.cli.up import demo_definition  # noqa: E402
from service.engine.factories import build_pruner, suggest  # noqa: E402
from service.spec import StudySpec, defaults_for  # noqa: E402
from worker.trainer import train  # noqa: E402


@dataclass
class Arm:
    seed: int
    epochs: int  # epochs actually trained, summed over the trials
    best: float  # best value of the COMPLETE trials (inf if none completed)
    complete: int
    pruned_trials: int
    diverged: int
    seconds: float


def run_arm(spec: StudySpec, seed: int, device: str, pruner: optuna.pruners.BasePruner | None = None) -> Arm:
    """`pruner`: instead of the one the service builds from the spec."""
    workload = spec.workload
    hp_base = {**defaults_for(workload.model), **workload.fixed}
    pruner = pruner or build_pruner(spec)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    counts = {"epochs": 0, "diverged": 0}

    def objective(trial: optuna.Trial) -> float:
        hp = {**hp_base, **suggest(trial, spec)}  # as Assignment.hyperparameters() merges them
        best: float | None = None
        run = train(workload, hp, device)
        try:
            for result in run:
                counts["epochs"] += 1
                if result.diverged or not math.isfinite(result.val_loss):
                    counts["diverged"] += 1
                    raise optuna.TrialPruned(result.diverged or "non-finite validation loss")
                best = result.val_loss if best is None else min(best, result.val_loss)
                trial.report(result.val_loss, result.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        finally:
            run.close()
        assert best is not None
        return best

    started = time.perf_counter()
    study.optimize(objective, n_trials=spec.budget.n_trials, catch=())
    seconds = time.perf_counter() - started
    states = [t.state for t in study.trials]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    n_pruned = states.count(optuna.trial.TrialState.PRUNED)
    best = study.best_value if complete else math.inf
    return Arm(seed, counts["epochs"], best, complete, n_pruned, counts["diverged"], seconds)


def parse_pruner(text: str) -> dict[str, Any]:
    """`median[:STARTUP:WARMUP]` or `percentile:P[:STARTUP:WARMUP]`: a study definition's pruner;
    `optuna:CLASS[:KEY=VALUE,...]`: {"kind": "optuna", "class": CLASS, "kwargs": {...}}."""
    kind, *numbers = text.split(":")
    try:
        if kind == "optuna" and len(numbers) in (1, 2):
            name = numbers[0]
            if not isinstance(getattr(optuna.pruners, name, None), type):
                raise ValueError(text)
            pairs = [item.split("=") for item in numbers[1].split(",")] if len(numbers) == 2 else []
            kwargs = {key: _number(value) for key, value in pairs}
            getattr(optuna.pruners, name)(**kwargs)  # a wrong keyword or value fails here, not in a job
            return {"kind": kind, "class": name, "kwargs": kwargs}
        if kind == "percentile" and len(numbers) in (1, 3):
            found: dict[str, Any] = {"kind": kind, "percentile": float(numbers[0])}
            numbers = numbers[1:]
        elif kind == "median" and len(numbers) in (0, 2):
            found = {"kind": kind}
        else:
            raise ValueError(text)
        if numbers:
            found.update(n_startup_trials=int(numbers[0]), n_warmup_steps=int(numbers[1]))
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected median[:STARTUP:WARMUP], percentile:P[:STARTUP:WARMUP] or optuna:CLASS[:KEY=VALUE,...]"
        ) from None
    return found


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def label(pruner: dict[str, Any]) -> str:
    if pruner["kind"] == "none":
        return "none"
    if pruner["kind"] == "optuna":
        short = pruner["class"].removesuffix("Pruner")
        return ":".join([short, *(f"{value:g}" for value in pruner["kwargs"].values())])
    head = f"p{pruner['percentile']:g}" if pruner["kind"] == "percentile" else "median"
    return f"{head}:{pruner['n_startup_trials']}:{pruner['n_warmup_steps']}"


def run_job(definition: dict[str, Any], seed: int, device: str, threads: int) -> Arm:
    """One arm, in whichever process runs it (--jobs): a study's numbers depend only on its seed."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = definition["pruner"]
    if chosen["kind"] == "optuna":
        spec = StudySpec.model_validate({**definition, "pruner": {"kind": "none"}})
        return run_arm(spec, seed, device, getattr(optuna.pruners, chosen["class"])(**chosen["kwargs"]))
    return run_arm(StudySpec.model_validate(definition), seed, device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40, help="trials per study (the demo's 40)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (the demo's 15)")
    parser.add_argument("--seeds", type=int, nargs="+", help="TPE sampler seeds (default 0 1 2; 0 with --tiny)")
    parser.add_argument(
        "--pruner",
        type=parse_pruner,
        action="append",
        help="a pruner to compare with none, as median[:STARTUP:WARMUP], percentile:P[:STARTUP:WARMUP] or "
        "optuna:CLASS[:KEY=VALUE,...] (repeatable; default: the demo's; the summary line is the first one's)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="studies run at once, one process each (the seconds column is then shared time)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per study (default 1, for stable timing)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="6 trials x 3 epochs, seed 0 unless --seeds (for the tests)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.trials, args.epochs = 6, 3
    args.seeds = args.seeds or ([0] if args.tiny else [0, 1, 2])
    demo = demo_definition("bench-pruning", args.trials, args.epochs)
    pruners = [p if p["kind"] == "optuna" else StudySpec.model_validate({**demo, "pruner": p}).pruner.model_dump() for p in args.pruner or [demo["pruner"]]]
    arms_of = [*pruners, {"kind": "none"}]
    print(
        f"pruning: digits MLP, demo space, {args.trials} trials x {args.epochs} epochs, seeds {args.seeds}, TPE; "
        f"{', '.join(label(p) for p in pruners)} (kind:n_startup_trials:n_warmup_steps; optuna pruners as Class:values) vs none; "
        f"device {args.device}, {args.threads} thread(s), {args.jobs} job(s)",
        flush=True,
    )
    header = f"{'seed':>4}  {'pruner':<22}  {'epochs':>6}  {'of max':>6}  {'best loss':>9}  {'complete':>8}  {'pruned':>6}  {'diverged':>8}  {'seconds':>7}"
    print(header)
    print("-" * len(header))
    jobs = [(seed, p) for seed in args.seeds for p in arms_of]
    definitions, seeds = [{**demo, "pruner": p} for _, p in jobs], [seed for seed, _ in jobs]
    job = functools.partial(run_job, device=args.device, threads=args.threads)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(job, definitions, seeds))
    else:
        results = list(map(job, definitions, seeds))
    arms = {(seed, label(p)): arm for (seed, p), arm in zip(jobs, results)}
    for seed, p in jobs:
        arm = arms[seed, label(p)]
        print(
            f"{seed:>4}  {label(p):<22}  {arm.epochs:>6}  {args.trials * args.epochs:>6}  "
            f"{arm.best:>9.4f}  {arm.complete:>8}  {arm.pruned_trials:>6}  {arm.diverged:>8}  {arm.seconds:>7.1f}"
        )
    print("-" * len(header))
    mean = statistics.fmean
    unpruned = [arms[seed, "none"].best for seed in args.seeds]
    if len(unpruned) > 1 and all(math.isfinite(b) for b in unpruned):
        # How far two studies without pruning land apart from seed to seed: the scale on which a
        # best-loss ratio over a few seeds can be read.
        print(f"none: best loss over seeds: mean {mean(unpruned):.4f}, spread (sd/mean) {statistics.stdev(unpruned) / mean(unpruned):.1%}")
    summaries = []
    for p in pruners:
        pairs = [(arms[seed, label(p)], arms[seed, "none"]) for seed in args.seeds]
        epoch_ratios = [a.epochs / b.epochs for a, b in pairs]
        loss_ratios = [a.best / b.best for a, b in pairs if math.isfinite(a.best) and math.isfinite(b.best) and b.best > 0]
        per_seed = ", ".join(f"{r:.2f}x" for r in epoch_ratios) + "; best loss " + ", ".join(f"{r:.3f}x" for r in loss_ratios)
        print(f"{label(p)}/none per seed: epochs {per_seed}")
        loss_part = f"{mean(loss_ratios):.2f}x" if loss_ratios else "n/a (a study completed no trial)"
        if loss_ratios:
            within = sum(r <= 1.02 for r in loss_ratios)
            print(
                f"{label(p)}/none: epochs {mean(epoch_ratios):.2f}x; best loss mean {mean(loss_ratios):.3f}x, "
                f"median {statistics.median(loss_ratios):.3f}x, within 2 % (or better) in {within} of {len(loss_ratios)} seeds"
            )
        summaries.append((mean(epoch_ratios), loss_part))
    n = len(args.seeds)
    epochs, loss_part = summaries[0]
    print(
        f"SUMMARY pruning: epochs pruned/unpruned = {epochs:.2f}x; "
        f"best loss pruned/unpruned = {loss_part} (mean over {n} seed{'s' if n != 1 else ''})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
