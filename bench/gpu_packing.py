#!/usr/bin/env python
"""Packing small trials onto one GPU: trials per hour with 1, 4 and 16 concurrent trial slots,
and the GPU's utilisation, for the digits MLP and a small CNN.

    .venv/bin/python -m bench.gpu_packing                        # on a CUDA machine: 60 s per configuration
    .venv/bin/python -m bench.gpu_packing --seconds 120 --slots 1 2 4 8 16
    .venv/bin/python -m bench.gpu_packing --tiny --device cpu    # slots 1 and 2, 5 s, on the CPU (for the tests)

Without a CUDA device (and without `--device cpu`) it prints
`SUMMARY gpu_packing: skipped (no CUDA device)` and exits 0.

The slots are OS processes (multiprocessing, spawn), max(--slots) of them started once; a
configuration (model x N slots) runs on N of them while the rest wait idle. Each of the N plays
one trial slot: it runs trials back to back with the built-in trainer
(`worker.trainer.train(workload, hp, device)`, every epoch iterated as a worker does), the
same way `hpo worker --slots N` packs N trials onto one device under the service (minus the
HTTP round trips, which this script leaves out to measure the device alone). Each first runs one
untimed 1-epoch trial (CUDA context, cuDNN autotuning, data cache), then all N wait on a
barrier, and the clock starts for all at once. A slot counts the trials it finished within
`--seconds`; a trial still running at the deadline is abandoned and not counted. trials/hour =
finished trials of all slots / seconds x 3600.

Trials: the study's defaults (service/spec/hyperparameters.py) with `--batch-size` (64) and
`--epochs` (15, the demo's) on digits: `mlp` is 2 x 128 hidden; `cnn` is 2 conv blocks of 32
and 64 channels (kernel 3) on the 8x8 images. All trials of a configuration are the same
(workload seed 0), like the trials of one study, so only the packing changes between rows.

GPU utilisation: `nvidia-smi --query-gpu=utilization.gpu,memory.used` (or pynvml when it is
importable) sampled every 0.5 s during the timed window; the table shows the mean utilisation and
the peak memory used. Each process uses 1 CPU thread (`torch.set_num_threads(1)`), so on a host
with fewer cores than slots the CPU, not the GPU, becomes the limit: the header prints the count.

Prints a table and ONE summary line:

    SUMMARY gpu_packing: 16 slots / 1 slot trials/hour = mlp 6.1x, cnn 3.2x; GPU util 1 slot 12%, 16 slots 85% (mlp); ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._slots import SlotPool  # noqa: E402

BARRIER_TIMEOUT = 600.0  # seconds for every slot to import torch, start CUDA and warm up


def slot_main(slot: int, device: str, commands: Any, barriers: dict[int, Any], results: Any) -> None:
    """One trial slot (a child process). For each command (model, slots, epochs, batch_size,
    seconds) from `commands`: warm up, wait for the other slots of the configuration, then train
    trials back to back until the deadline; put (slot, finished trials, epochs trained, error) on
    `results`. None ends the process."""
    import torch

    from service.spec import Workload, defaults_for
    from worker.trainer import train

    torch.set_num_threads(1)
    for model, slots, epochs, batch_size, seconds in iter(commands.get, None):
        hp = {**defaults_for(model), "batch_size": batch_size}
        workload = Workload(model=model, dataset="digits", epochs=epochs, seed=0)
        warm = Workload(model=model, dataset="digits", epochs=1, seed=0)
        try:
            for _ in train(warm, hp, device):
                pass
            barriers[slots].wait(timeout=BARRIER_TIMEOUT)
        except Exception as exc:
            barriers[slots].abort()
            results.put((slot, -1, 0, f"{type(exc).__name__}: {exc}"))
            return
        deadline = time.monotonic() + seconds
        finished = trained = 0
        while time.monotonic() < deadline:
            run = train(workload, hp, device)
            completed = True
            for result in run:
                trained += 1
                if result.diverged:
                    break  # a diverged run ends early, as on a worker; it still counts as a trial
                if time.monotonic() >= deadline:
                    completed = False
                    break
            run.close()
            if completed and time.monotonic() <= deadline:
                finished += 1
        results.put((slot, finished, trained, None))


class UtilSampler:
    """Samples the GPU's utilisation (%) and memory used (MiB) every `interval` seconds in a thread."""

    def __init__(self, index: int, interval: float = 0.5) -> None:
        self.index, self.interval = index, interval
        self.util: list[float] = []
        self.memory: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._read = self._reader()

    def _reader(self) -> Any:
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)

            def nvml() -> tuple[float, float]:
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                info = pynvml.nvmlDeviceGetMemoryInfo(handle)
                return float(rates.gpu), info.used / 2**20

            return nvml
        except Exception:  # not installed, or no NVML: ask nvidia-smi
            pass
        if shutil.which("nvidia-smi") is None:
            return None

        def smi() -> tuple[float, float]:
            out = (
                subprocess.run(
                    [
                        "nvidia-smi",
                        "-i",
                        str(self.index),
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[0]
            )
            util, memory = (float(v) for v in out.split(","))
            return util, memory

        return smi

    @property
    def available(self) -> bool:
        return self._read is not None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                util, memory = self._read()
            except Exception:
                continue
            self.util.append(util)
            self.memory.append(memory)

    def __enter__(self) -> UtilSampler:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class Row:
    model: str
    slots: int
    trials: int
    epochs: int
    seconds: float
    util: float | None
    memory: float | None
    errors: list[str] = field(default_factory=list)

    @property
    def per_hour(self) -> float:
        return self.trials / self.seconds * 3600


class Slots(SlotPool):
    """max(--slots) slot processes (bench/_slots.py): a configuration with N slots runs on the
    first N of them while the others wait idle on their command queues."""

    def __init__(self, n: int, device: str) -> None:
        super().__init__(n, slot_main, device)

    def measure(self, model: str, slots: int, args: argparse.Namespace, gpu_index: int | None) -> Row:
        for q in self.commands[:slots]:
            q.put((model, slots, args.epochs, args.batch_size, args.seconds))
        errors: list[str] = []
        sampler = UtilSampler(gpu_index) if gpu_index is not None else None
        try:
            self.barriers[slots].wait(timeout=BARRIER_TIMEOUT)
        except threading.BrokenBarrierError:
            errors.append("a slot failed to start")
        if not errors:
            if sampler is not None:
                with sampler:
                    time.sleep(args.seconds)
            else:
                time.sleep(args.seconds)
        got = []
        for _ in range(slots):
            try:
                got.append(self.results.get(timeout=60 if errors else args.seconds + 600))
            except Exception:
                errors.append("a slot sent no result")
                break
        errors += [f"slot {s}: {e}" for s, _, _, e in got if e]
        util = statistics.fmean(sampler.util) if sampler is not None and sampler.util else None
        memory = max(sampler.memory) if sampler is not None and sampler.memory else None
        trials = sum(max(n, 0) for _, n, _, _ in got)
        return Row(model, slots, trials, sum(e for _, _, e, _ in got), args.seconds, util, memory, errors)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 4, 16], help="concurrent trial slots to compare")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--seconds", type=float, default=60.0, help="timed window per configuration")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (the demo's 15)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of every trial (the default 64)")
    parser.add_argument("--tiny", action="store_true", help="slots 1 and 2, 5 s, 2 epochs per trial (for the tests)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.slots, args.seconds, args.epochs = [1, 2], 5.0, 2

    import torch

    is_cuda = args.device.startswith("cuda")
    if is_cuda and not torch.cuda.is_available():
        print("SUMMARY gpu_packing: skipped (no CUDA device)")
        return 0
    gpu_index = (torch.device(args.device).index or 0) if is_cuda else None
    where = torch.cuda.get_device_name(gpu_index) if is_cuda else "cpu"
    print(
        f"gpu_packing: {where}, host {os.cpu_count()} CPUs, torch {torch.__version__}; digits, batch {args.batch_size}, "
        f"{args.epochs} epochs per trial, {args.seconds:g} s per configuration, 1 CPU thread per slot",
        flush=True,
    )
    if is_cuda and not UtilSampler(gpu_index).available:
        print("(neither pynvml nor nvidia-smi found: GPU utilisation n/a)")
    header = f"{'model':<5}  {'slots':>5}  {'trials':>6}  {'epochs':>6}  {'trials/hour':>11}  {'vs 1 slot':>9}  {'GPU util':>8}  {'GPU mem MiB':>11}"
    print(header)
    print("-" * len(header))
    rows: dict[tuple[str, int], Row] = {}
    pool = Slots(max(args.slots), args.device)
    try:
        for model, slots in [(m, n) for m in args.models for n in args.slots]:
            row = pool.measure(model, slots, args, gpu_index)
            rows[model, slots] = row
            base = rows.get((model, args.slots[0]))
            speedup = f"{row.per_hour / base.per_hour:.2f}x" if base and base.trials else "n/a"
            memory = "n/a" if row.memory is None else f"{row.memory:.0f}"
            print(
                f"{model:<5}  {slots:>5}  {row.trials:>6}  {row.epochs:>6}  {row.per_hour:>11,.0f}  {speedup:>9}  "
                f"{_pct(row.util):>8}  {memory:>11}",
                flush=True,
            )
            for error in row.errors:
                print(f"  error: {error}", file=sys.stderr)
            if row.errors:
                print("SUMMARY gpu_packing: failed (see the errors above)")
                return 1
    finally:
        pool.close()

    lo, hi = args.slots[0], args.slots[-1]
    ratios = []
    for model in args.models:
        a, b = rows[model, lo], rows[model, hi]
        ratios.append(f"{model} {b.per_hour / a.per_hour:.1f}x" if a.trials else f"{model} n/a")
    if is_cuda:
        utils = "; ".join(
            f"GPU util {lo} slot{'s' if lo != 1 else ''} {_pct(rows[m, lo].util)}, {hi} slots {_pct(rows[m, hi].util)} ({m})"
            for m in args.models
        )
    else:
        utils = "GPU util n/a (cpu)"
    print(
        f"SUMMARY gpu_packing: {hi} slots / {lo} slot{'s' if lo != 1 else ''} trials/hour = {', '.join(ratios)}; {utils}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
