#!/usr/bin/env python
"""Fused trials: trial-epochs per second of K trials trained fused (one batched model,
worker/fused/), against the same K trials in trial slots (--slots) and one after another.

    .venv/bin/python -m bench.fused                              # CPU: mlp and cnn, K = 1 4 16 64
    .venv/bin/python -m bench.fused --device cuda --epochs 5     # on a GPU
    .venv/bin/python -m bench.fused --tiny                       # K = 1 2, 1 epoch (for the tests)

The K trials are those of one study where lr and weight_decay are searched: the model's defaults
(service/spec/hyperparameters.py) with the shape's sizes, and lr and weight decay drawn
log-uniformly (seeded; lr within Adam's usual range, so that none diverges), on digits 8x8.
Shapes (SHAPES): `mlp` 2 x 128 hidden, batch 64, and `cnn` 2 conv blocks of 32 and 64 channels,
batch 64 (bench/gpu_packing.py's); `mlp32` 2 x 32 hidden and `cnn8` 8 and 16 channels, batch 32,
where a trial's step is mostly overhead rather than arithmetic.
Each arm trains the same K trials `--epochs` epochs each, set-up included (building the models,
and for the fused arm the group), after an untimed warm-up of one epoch in each process:

  alone   one process trains the K trials one after another (`worker.trainer.train`);
  slots   min(K, CPUs) processes (spawned once, like `hpo worker --slots N`) share the K trials;
  fused   one process trains the K trials as one group (`worker.fused.trainer.FusedTraining`).

alone and fused get the same `--threads` (default: the CPUs, as `hpo worker` without --threads
uses them); each slot gets 1 thread, as `hpo worker --slots N` gives them. So every arm may use
the whole machine: the table's header gives the count.
trial-epochs/s = trial-epochs trained / wall seconds of the arm (a trial that diverged stops
early, and counts the epochs it trained, in every arm alike).

Prints a table and ONE summary line:

    SUMMARY fused: K=4 fused / alone trial-epochs/s = mlp 1.1x, cnn 1.0x, ...; fused / 2 slots = ...; K=16 ...
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._slots import SlotPool  # noqa: E402

BARRIER_TIMEOUT = 600.0


# The shapes measured: the digits mlp and cnn of bench/gpu_packing.py (the defaults, batch 64),
# and a small one of each (batch 32), where one trial's step is mostly overhead.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {"batch_size": 64}),
    "cnn": ("cnn", {"batch_size": 64}),
    "mlp32": ("mlp", {"hidden_size": 32, "batch_size": 32}),
    "cnn8": ("cnn", {"channels": 8, "batch_size": 32}),
}


def trials(shape: str, k: int, seed: int = 0) -> list[dict[str, Any]]:
    """K hyperparameter sets of one fused shape: lr and weight decay drawn, the rest the defaults."""
    from service.spec import defaults_for

    model, sizes = SHAPES[shape]
    rng = random.Random(seed)
    base = {**defaults_for(model), **sizes}
    # Adam (the default optimizer): 1e-4..3e-3 is its usual range (HYPERPARAMETERS.md).
    return [
        {**base, "lr": math.exp(rng.uniform(math.log(1e-4), math.log(3e-3))), "weight_decay": math.exp(rng.uniform(math.log(1e-6), math.log(1e-3)))}
        for _ in range(k)
    ]


def workload_for(model: str, epochs: int) -> Any:
    from service.spec import Workload

    return Workload(model=model, dataset="digits", epochs=epochs, seed=0)


def one_after_another(shape: str, hps: list[dict[str, Any]], epochs: int, device: str) -> int:
    """Train each trial alone, in turn; the trial-epochs trained."""
    from worker.trainer import train

    done = 0
    for hp in hps:
        for result in train(workload_for(SHAPES[shape][0], epochs), hp, device):
            done += 1
            if result.diverged:
                break
    return done


def fused(shape: str, hps: list[dict[str, Any]], epochs: int, device: str) -> int:
    """Train the trials as one fused group; the trial-epochs trained."""
    from worker.fused.trainer import FusedTraining

    group = FusedTraining(workload_for(SHAPES[shape][0], epochs), device)
    for i, hp in enumerate(hps):
        group.add(i, hp)
    done = 0
    while group.members:
        done += len(group.run_epoch())
    return done


def slot_main(_slot: int, device: str, commands: Any, barriers: dict[int, Any], results: Any) -> None:
    """A trial slot (a child process): for each (model, slots, hps, epochs) warm up, wait for the
    other slots, train its share one after another, put the trial-epochs on `results`."""
    import torch

    torch.set_num_threads(1)
    for model, slots, hps, epochs in iter(commands.get, None):
        try:
            one_after_another(model, hps[:1], 1, device)
            barriers[slots].wait(timeout=BARRIER_TIMEOUT)
            results.put((one_after_another(model, hps, epochs, device), None))
        except Exception as exc:
            barriers[slots].abort()
            results.put((0, f"{type(exc).__name__}: {exc}"))


class Slots(SlotPool):
    """Up to --slots slot processes (bench/_slots.py), started once for the whole run."""

    def __init__(self, n: int, device: str) -> None:
        super().__init__(n, slot_main, device)

    def run(self, model: str, hps: list[dict[str, Any]], epochs: int) -> tuple[int, float]:
        """(trial-epochs, seconds) of the trials shared round-robin over min(K, slots) slots."""
        n = min(len(hps), len(self.procs))
        for i in range(n):
            self.commands[i].put((model, n, hps[i::n], epochs))
        self.barriers[n].wait(timeout=BARRIER_TIMEOUT)
        started = time.perf_counter()
        got = [self.results.get(timeout=BARRIER_TIMEOUT) for _ in range(n)]
        seconds = time.perf_counter() - started
        errors = [e for _, e in got if e]
        if errors:
            raise RuntimeError("; ".join(errors))
        return sum(c for c, _ in got), seconds


def timed(work: Any, *args: Any) -> tuple[int, float]:
    started = time.perf_counter()
    count = work(*args)
    return count, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64], help="group sizes to compare")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="shapes to measure (SHAPES)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial")
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="the most trial slots (default: the CPUs)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of alone and fused (default: the CPUs)")
    parser.add_argument("--tiny", action="store_true", help="K = 1 2, 1 epoch, 2 slots (for the tests)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.k, args.epochs, args.slots, args.models = [1, 2], 1, 2, ["mlp32", "cnn8"]
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("SUMMARY fused: skipped (no CUDA device)")
        return 0
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    print(
        f"fused: {where}, host {os.cpu_count()} CPUs, torch {torch.__version__}; digits, "
        f"{args.epochs} epochs per trial; alone and fused {args.threads} threads, slots up to {args.slots} x 1 thread",
        flush=True,
    )
    header = f"{'shape':<5}  {'K':>3}  {'alone te/s':>10}  {'slots':>5}  {'slots te/s':>10}  {'fused te/s':>10}  {'fused/alone':>11}  {'fused/slots':>11}"
    print(header)
    print("-" * len(header))
    rates: dict[tuple[str, int], tuple[float, float, float, int]] = {}
    pool = Slots(args.slots, args.device)
    try:
        for model in args.models:
            # The warm-up of this process: data, kernels, allocator, for both paths.
            one_after_another(model, trials(model, 1), 1, args.device)
            fused(model, trials(model, 2), 1, args.device)
            for k in args.k:
                hps = trials(model, k)
                a_count, a_s = timed(one_after_another, model, hps, args.epochs, args.device)
                s_count, s_s = pool.run(model, hps, args.epochs)
                f_count, f_s = timed(fused, model, hps, args.epochs, args.device)
                alone, slots, fast = a_count / a_s, s_count / s_s, f_count / f_s
                n = min(k, args.slots)
                rates[model, k] = (alone, slots, fast, n)
                print(
                    f"{model:<5}  {k:>3}  {alone:>10.1f}  {n:>5}  {slots:>10.1f}  {fast:>10.1f}  {fast / alone:>10.2f}x  {fast / slots:>10.2f}x",
                    flush=True,
                )
    finally:
        pool.close()
    parts = []
    for k in [k for k in args.k if k > 1] or args.k:
        by_model = ", ".join(f"{m} {rates[m, k][2] / rates[m, k][0]:.1f}x" for m in args.models)
        vs_slots = ", ".join(f"{m} {rates[m, k][2] / rates[m, k][1]:.1f}x" for m in args.models)
        parts.append(f"K={k} fused / alone trial-epochs/s = {by_model}; fused / {rates[args.models[0], k][3]} slots = {vs_slots}")
    print("SUMMARY fused: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
