#!/usr/bin/env python
"""Pruning at equal compute: each arm (a pruner, or none) trains trials until it has used the same
epoch budget, and is judged by its anytime curve, the best loss found after each epoch consumed.
That is how the Optuna paper, ASHA, Hyperband and BOHB compare pruners: the epochs a pruner saves
buy more trials, and the question is whether they find a better model sooner.

    .venv/bin/python -m bench.pruning                  # 3 workloads x 20 seeds, the default pruner vs none
    .venv/bin/python -m bench.pruning --tiny           # 3 epochs per trial, budget 9, seeds 0 1 (the tests)
    .venv/bin/python -m bench.pruning --workload demo --pruner median:5:2 --pruner hyperband:max_resource=15 \
        --pruner successive_halving:min_resource=1,reduction_factor=3 --plot docs/pruning-anytime.png

Workloads (`--workload`, repeatable; default all three), each with the demo's search space
(`service.cli.up.demo_definition`: optimizer sgd/adam with its conditional lr, batch size 1 to
1024 log, dropout, weight decay, schedule), TPE, 15 epochs per trial:
  demo        the demo study itself: the MLP on scikit-learn's digits;
  cnn         the built-in cnn on digits as 8x8 images (16 channels in the first block), batch
              sizes 16 to 1024;
  regression  the MLP on a synthetic regression (make_regression, 2000 x 20, noise 10).

The budget is the study definition's `budget.max_epochs` (default 600: what 40 unpruned trials of
15 epochs use), spent as the service spends it: a trial is started while the epochs used are
below the budget, and runs to its end or its pruning (no trial is cut short), so an arm may use a
few epochs more than the budget; its curve is read up to the budget only.

`--pruner` (repeatable) takes a study definition's pruner, built by the service's `build_pruner`:
`KIND[:KEY=VALUE,...]` (e.g. `hyperband:max_resource=15`, `patience:patience=1,wrapped=median:5:0`), the short
`median:STARTUP:WARMUP` / `percentile:P:STARTUP:WARMUP`, or JSON (`{"kind": "patience", ...}`).
The default is the demo's (DESIGN.md's `median`, n_startup_trials=5, n_warmup_steps=2).

Each trial is trained in this process by the real built-in trainer (`worker.trainer.train(...,
"cpu")`), reporting the validation loss after every epoch (step = epoch) as a worker does; a run
the divergence guard stops is pruned, in every arm. Optuna runs in-process on in-memory storage:
what is measured is the pruner alone. The one difference from the service: the service rebuilds
the sampler for every claim with the seed advanced by the claims (`build_sampler`), where this
keeps one `TPESampler(seed=s)` per study; every arm of a seed starts from the same sampler state.

"Best loss" after e epochs is the best objective among the trials COMPLETE by then (a trial's
objective is its lowest validation loss; README, "The objective"): what the service reports as the
best trial at that moment. Per workload and pruner, over the seeds (no pruning re-seeded too):
  - loss@1/4, @1/2, @1: the pruned arm's best loss over no pruning's at that share of the budget
    (median and quartiles), and the share of seeds where the pruned arm is at least as good at 1;
  - reach: the epochs the pruned arm needs until its best loss is at most no pruning's at the
    full budget, over the budget (median; "never" counts as the budget).
Prints a row per arm, a table per workload and ONE summary line, per pruner:

    SUMMARY pruning: median:5:2 [demo 0.98x 80% 0.45x | cnn ... | regression ...] (loss@1 median, seeds >= none, reach median; 20 seeds)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# As a worker trains (worker/cli.py): MKL's strict reproducibility, so that a study's numbers do
# not depend on where its tensors happen to be allocated (docs/benchmarks.md, section c).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import optuna  # noqa: E402
import pydantic  # noqa: E402
import torch  # noqa: E402

from bench.pruning_report import FRACTIONS, Arm, load, report  # noqa: E402
from service.cli.up import demo_definition  # noqa: E402
from service.engine.factories import build_pruner, suggest  # noqa: E402
from service.spec import StudySpec, defaults_for  # noqa: E402
from worker.trainer import train  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    "demo": {"model": "mlp", "dataset": "digits"},
    "cnn": {"model": "cnn", "dataset": "digits", "channels": 16},  # batch sizes 16 to 1024: SPACES
    "regression": {
        "model": "mlp",
        "dataset": {"kind": "synthetic", "task": "regression", "n_samples": 2000, "n_features": 20, "noise": 10.0, "seed": 0},
    },
}
# Where a workload's space differs from the demo's. The cnn's batch starts at 16: below that an
# epoch is hundreds of tiny steps (a second each on this CPU) for sizes no one trains a cnn at.
SPACES: dict[str, dict[str, Any]] = {"cnn": {"batch_size": {"type": "int", "low": 16, "high": 1024, "log": True}}}
# Rough cost of an epoch relative to the demo's, to start the slow arms first.
COST = {"demo": 1.0, "cnn": 3.0, "regression": 0.7}
DEFAULT_PRUNER = "median:5:2"


def definition(workload: str, epochs: int, budget: int, pruner: dict[str, Any]) -> dict[str, Any]:
    d = demo_definition(f"bench-pruning-{workload}", 1, epochs)
    d["workload"] = {**WORKLOADS[workload], "epochs": epochs}
    d["space"] = {**d["space"], **SPACES.get(workload, {})}
    d["budget"] = {"n_trials": 1_000_000, "max_epochs": budget, "max_concurrent": 1}
    d["pruner"] = pruner
    return d


def run_arm(spec: StudySpec, seed: int, device: str) -> tuple[list[float], dict[str, int]]:
    """Trials until the epochs used reach spec.budget.max_epochs; the anytime curve and counts."""
    budget = spec.budget.max_epochs
    assert budget is not None
    workload = spec.workload
    hp_base = {**defaults_for(workload.model), **workload.fixed}
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=build_pruner(spec))
    counts = {"epochs": 0, "trials": 0, "complete": 0, "pruned": 0, "diverged": 0}
    curve: list[float] = []
    best = math.inf
    while counts["epochs"] < budget:
        trial = study.ask()
        counts["trials"] += 1
        hp = {**hp_base, **suggest(trial, spec)}  # as Assignment.hyperparameters() merges them
        own: float | None = None
        state = optuna.trial.TrialState.COMPLETE
        run = train(workload, hp, device)
        try:
            for result in run:
                counts["epochs"] += 1
                if counts["epochs"] <= budget:
                    curve.append(best)
                if result.diverged or not math.isfinite(result.val_loss):
                    counts["diverged"] += 1
                    state = optuna.trial.TrialState.PRUNED
                    break
                own = result.val_loss if own is None else min(own, result.val_loss)
                trial.report(result.val_loss, result.epoch)
                if trial.should_prune():
                    state = optuna.trial.TrialState.PRUNED
                    break
        finally:
            run.close()
        if state == optuna.trial.TrialState.COMPLETE:
            assert own is not None
            study.tell(trial, own)
            counts["complete"] += 1
            # It completed at the epoch just consumed: the curve has it from that epoch on.
            if counts["epochs"] <= budget:
                best = min(best, own)
                curve[-1] = best
        else:
            study.tell(trial, state=state)
            counts["pruned"] += 1
    return curve, counts


def run_job(workload: str, label: str, pruner: dict[str, Any], seed: int, epochs: int, budget: int, device: str, threads: int) -> Arm:
    """One arm, in whichever process runs it (--jobs): an arm's numbers depend only on its inputs."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = StudySpec.model_validate(definition(workload, epochs, budget, pruner))
    started = time.perf_counter()
    curve, counts = run_arm(spec, seed, device)
    return Arm(workload, label, seed, curve, seconds=time.perf_counter() - started, **counts)


def parse_pruner(text: str) -> tuple[str, dict[str, Any]]:
    """A label and a study definition's pruner, checked by the service's own model."""
    kind, _, rest = text.partition(":")
    try:
        if text.lstrip().startswith("{"):
            found = json.loads(text)
        elif "=" in rest:
            found = {"kind": kind}
            for key, value in (item.split("=", 1) for item in rest.split(",")):
                # patience's wrapped pruner in the short form: wrapped=median:5:0
                found[key] = parse_pruner(value)[1] if key == "wrapped" else _value(value)
        else:
            numbers = rest.split(":") if rest else []
            found = {"kind": kind}
            if kind == "percentile":
                found["percentile"] = float(numbers.pop(0))
            if numbers:
                if kind not in ("median", "percentile") or len(numbers) != 2:
                    raise ValueError(text)
                found.update(n_startup_trials=int(numbers[0]), n_warmup_steps=int(numbers[1]))
        pruner = StudySpec.model_validate({**definition("demo", 15, 600, found)}).pruner.model_dump(exclude_none=True)
    except (ValueError, IndexError, pydantic.ValidationError) as e:
        detail = ""
        if isinstance(e, pydantic.ValidationError):
            first = e.errors()[0]
            detail = f" ({'.'.join(str(part) for part in first['loc'])}: {first['msg']})"
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KIND[:KEY=VALUE,...] (a study definition's pruner), median:STARTUP:WARMUP, "
            f"percentile:P[:STARTUP:WARMUP] or JSON{detail}"
        ) from None
    return text, pruner


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=list(WORKLOADS), action="append", help="repeatable; default all three")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (the demo's 15)")
    parser.add_argument("--budget", type=int, default=600, help="epochs per arm: budget.max_epochs (default 40 x 15)")
    parser.add_argument("--seeds", type=int, nargs="+", help="TPE sampler seeds (default 0 to 19; 0 1 with --tiny)")
    parser.add_argument("--pruner", type=parse_pruner, action="append", help=f"repeatable; default {DEFAULT_PRUNER}, the demo's")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="arms run at once, one process each (default: the CPUs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per arm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plot", type=Path, help="write the anytime curves (median and quartile band per arm) as a PNG here")
    parser.add_argument("--save", type=Path, help="write every arm's curve and counts as JSON here")
    parser.add_argument("--tiny", action="store_true", help="3 epochs per trial, budget 9, seeds 0 1 (for the tests)")
    parser.add_argument("--load", type=Path, nargs="+", metavar="JSON", help="train nothing: the tables, summary and plot of runs saved with --save")
    parser.add_argument(
        "--baseline-from", type=Path, metavar="JSON",
        help="take the no-pruning arms from a run saved with --save (same seeds, epochs and budget) instead of training them again",
    )
    args = parser.parse_args(argv)
    if args.load:
        arms, budget, pruners = load(args.load)
        workloads = [w for w in WORKLOADS if any(a.workload == w for a in arms.values())]
        seeds = sorted({a.seed for a in arms.values()})
        print(f"pruning at equal compute, from {', '.join(map(str, args.load))}: workloads {', '.join(workloads)}; budget {budget} epochs per arm; seeds {seeds}")
        report(arms, workloads, pruners, seeds, budget, args.plot)
        return 0
    if args.tiny:
        args.epochs, args.budget = 3, 9
    args.seeds = args.seeds or ([0, 1] if args.tiny else list(range(20)))
    workloads = args.workload or list(WORKLOADS)
    pruners = dict(args.pruner or [parse_pruner(DEFAULT_PRUNER)])
    arm_pruners = {**pruners, "none": {"kind": "none"}}
    arms: dict[tuple[str, str, int], Arm] = {}
    if args.baseline_from:
        # An arm's numbers depend only on its workload, seed, epochs and budget (and the code):
        # no pruning's are the same in every run that shares them.
        saved, budget, _ = load([args.baseline_from])
        arms = {k: a for k, a in saved.items() if a.pruner == "none" and a.workload in workloads and a.seed in args.seeds}
        if budget != args.budget or len(arms) != len(workloads) * len(args.seeds):
            parser.error(f"--baseline-from {args.baseline_from}: needs no pruning's arms of every workload and seed at budget {args.budget}")
        del arm_pruners["none"]
    print(
        f"pruning at equal compute: workloads {', '.join(workloads)}; demo space, TPE, {args.epochs} epochs per trial, "
        f"budget {args.budget} epochs per arm; seeds {args.seeds}; {', '.join(pruners)} vs none; "
        f"device {args.device}, {args.threads} thread(s), {args.jobs} job(s)",
        flush=True,
    )
    jobs = [(w, label, p, s) for w in sorted(workloads, key=lambda w: -COST[w]) for s in args.seeds for label, p in arm_pruners.items()]
    header = f"{'workload':<10}  {'seed':>4}  {'pruner':<28}  {'epochs':>6}  {'trials':>6}  {'complete':>8}  {'pruned':>6}  {'diverged':>8}  " + "  ".join(
        f"{'best@' + str(f):>9}" for f in FRACTIONS
    ) + f"  {'seconds':>7}"
    print(header)
    print("-" * len(header), flush=True)

    def show(arm: Arm) -> None:
        bests = "  ".join(f"{arm.curve[max(1, round(f * args.budget)) - 1]:>9.4f}" for f in FRACTIONS)
        print(
            f"{arm.workload:<10}  {arm.seed:>4}  {arm.pruner:<28}  {arm.epochs:>6}  {arm.trials:>6}  {arm.complete:>8}  "
            f"{arm.pruned:>6}  {arm.diverged:>8}  {bests}  {arm.seconds:>7.1f}",
            flush=True,
        )
        arms[arm.workload, arm.pruner, arm.seed] = arm

    for arm in list(arms.values()):
        show(arm)  # the no-pruning arms of --baseline-from
    common = (args.epochs, args.budget, args.device, args.threads)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for future in as_completed([pool.submit(run_job, w, label, p, s, *common) for w, label, p, s in jobs]):
                show(future.result())
    else:
        for w, label, p, s in jobs:
            show(run_job(w, label, p, s, *common))
    print("-" * len(header))
    report(arms, workloads, list(pruners), args.seeds, args.budget, args.plot)
    if args.save:
        saved = {"budget": args.budget, "epochs": args.epochs, "pruners": list(pruners), "arms": [asdict(a) for a in arms.values()]}
        args.save.write_text(json.dumps(saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
