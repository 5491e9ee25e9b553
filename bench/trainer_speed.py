#!/usr/bin/env python
"""Training throughput of the built-in trainer against a plain DataLoader loop, side by side.

    .venv/bin/python -m bench.trainer_speed                  # CPU, batch sizes 1, 32, 1024
    .venv/bin/python -m bench.trainer_speed --device cuda    # the same on a CUDA GPU
    .venv/bin/python -m bench.trainer_speed --tiny           # 1 epoch, batch 32 (for the tests)

Both sides train the same model (`worker.models.build_model`, the digits MLP with the default
hyperparameters of service/spec/hyperparameters.py: 2 x 128 hidden, dropout 0.2) with the same
optimizer (`worker.optim.build_optimizer`: adam, fused where torch has it) on the same data
(`worker.data.load_split("digits")`: 1437 training and 360 validation samples), for the same
number of epochs, each followed by a validation pass:

- trainer: `worker.trainer.train(workload, hp, device)`, iterated to the end (the dataset lives
  on the device; batches are slices of one shuffled copy per epoch; batch losses are read back
  every 16 batches; the hand-written MLP step of worker/mlp_step.py). The table also shows it
  with `fast_step: false` (the same loop through nn.Module and autograd), which the summary
  line's ratio does not use;
- DataLoader: the loop most PyTorch code has: `DataLoader(TensorDataset(x, y), batch_size,
  shuffle=True)` over host tensors (pin_memory on CUDA), each batch moved to the device,
  cross-entropy, zero_grad / backward / step, `loss.item()` per batch for the running training
  loss; then the validation pass over a DataLoader of the validation set, in chunks of
  max(4096, batch size) as the trainer's validation uses (so the two differ in the training loop,
  not in how validation is batched), with `.item()` per chunk for the loss and the accuracy.

Timed: the epochs only (wall clock, perf_counter, after a CUDA synchronize), not the setup (data
loading, model and optimizer construction, the trainer's one validation pass before training).
Each side is warmed up with one untimed epoch first; then the two sides alternate `--repeats`
times and the median samples/s of each is reported. samples/s = epochs x training samples /
seconds. CPU runs use `--threads` torch threads (default 1).

Prints a table and ONE summary line:

    SUMMARY trainer: trainer/DataLoader samples/s at batch 32 (cpu) = 3.1x; batch 1 = ..x; batch 1024 = ..x (with the autograd step: ..x at batch 32)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from service.spec import Workload, defaults_for  # noqa: E402
from worker.data import load_split  # noqa: E402
from worker.models import build_model  # noqa: E402
from worker.optim import build_optimizer  # noqa: E402
from worker.trainer import EVAL_CHUNK, train  # noqa: E402

# Epochs per measurement when --epochs is not given: about a second of training on one CPU core
# for each batch size (an epoch is 1437 steps at batch 1, 45 at 32, 2 at 1024).
DEFAULT_EPOCHS = {1: 3, 32: 30, 1024: 300}
SEED = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trainer(workload: Workload, hp: dict[str, Any], device: torch.device) -> float:
    """Seconds for `workload.epochs` epochs of the built-in trainer (setup excluded)."""
    run = train(workload, hp, device)  # data, model, optimizer, the initial validation pass
    _sync(device)
    started = time.perf_counter()
    n = 0
    for result in run:
        if result.diverged:
            raise RuntimeError(f"the trainer's run diverged ({result.diverged}); lower --lr")
        n += 1
    _sync(device)
    seconds = time.perf_counter() - started
    assert n == workload.epochs, (n, workload.epochs)
    return seconds


def time_dataloader(workload: Workload, hp: dict[str, Any], device: torch.device) -> float:
    """Seconds for `workload.epochs` epochs of a plain DataLoader loop (setup excluded)."""
    torch.manual_seed(SEED)
    data = load_split(workload.dataset, val_fraction=workload.val_fraction, seed=workload.seed, device="cpu")
    model = build_model(workload.model, data.input_shape, data.n_outputs, hp).to(device)
    optimizer = build_optimizer(model.parameters(), hp)
    batch_size = int(hp["batch_size"])
    pin = device.type == "cuda"
    train_loader = DataLoader(
        TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True, pin_memory=pin
    )
    val_loader = DataLoader(
        TensorDataset(data.x_val, data.y_val), batch_size=max(EVAL_CHUNK, batch_size), pin_memory=pin
    )
    _sync(device)
    started = time.perf_counter()
    for _epoch in range(workload.epochs):
        model.train()
        train_sum, train_n = 0.0, 0
        for xb, yb in train_loader:
            xb, yb = xb.to(device, non_blocking=pin), yb.to(device, non_blocking=pin)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_sum += loss.item() * xb.shape[0]
            train_n += xb.shape[0]
        model.eval()
        val_sum, correct, val_n = 0.0, 0, 0
        with torch.no_grad():
            for xb, yb in val_loader:
                xb, yb = xb.to(device, non_blocking=pin), yb.to(device, non_blocking=pin)
                out = model(xb)
                val_sum += F.cross_entropy(out, yb, reduction="sum").item()
                correct += int((out.argmax(dim=1) == yb).sum().item())
                val_n += xb.shape[0]
        if math.isnan(train_sum):
            raise RuntimeError("the DataLoader run diverged; lower --lr")
    _sync(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 1024])
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"epochs per measurement (default per batch size: {DEFAULT_EPOCHS})"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side; the median is reported")
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="learning rate (low enough that no run diverges at batch 1)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, for stable timing)")
    parser.add_argument("--tiny", action="store_true", help="1 epoch, batch 32 only, 1 repeat (for the tests)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch_sizes, args.epochs, args.repeats = [32], 1, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("SUMMARY trainer: skipped (no CUDA device)")
        return 0
    torch.set_num_threads(args.threads)

    n_train = load_split("digits", val_fraction=0.2, seed=SEED, device="cpu").x_train.shape[0]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print(
        f"trainer_speed: digits MLP (2 x 128), adam lr={args.lr:g}, {n_train} training samples, {where}, "
        f"torch {torch.__version__}, median of {args.repeats}",
        flush=True,
    )
    header = (
        f"{'batch':>5}  {'epochs':>6}  {'trainer samples/s':>17}  {'DataLoader samples/s':>20}  {'ratio':>6}  "
        f"{'trainer, autograd step':>22}  {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    ratios: dict[int, float] = {}
    autograd_ratios: dict[int, float] = {}
    for batch_size in args.batch_sizes:
        epochs = args.epochs or DEFAULT_EPOCHS.get(batch_size, 10)
        hp = {**defaults_for("mlp"), "batch_size": batch_size, "lr": args.lr}
        # The trainer as it runs by default (the hand-written MLP step, worker/mlp_step.py), and
        # with `fast_step: false` (nn.Module forward and autograd), to show what each part gives.
        timed = {
            fast: Workload(model="mlp", dataset="digits", epochs=epochs, seed=SEED, fast_step=fast)
            for fast in (True, False)
        }
        for fast in (True, False):
            time_trainer(timed[fast].model_copy(update={"epochs": 1}), hp, device)
        time_dataloader(timed[True].model_copy(update={"epochs": 1}), hp, device)
        trainer_rates, autograd_rates, loader_rates = [], [], []
        for _ in range(args.repeats):
            trainer_rates.append(epochs * n_train / time_trainer(timed[True], hp, device))
            autograd_rates.append(epochs * n_train / time_trainer(timed[False], hp, device))
            loader_rates.append(epochs * n_train / time_dataloader(timed[True], hp, device))
        t, a, d = (statistics.median(r) for r in (trainer_rates, autograd_rates, loader_rates))
        ratios[batch_size], autograd_ratios[batch_size] = t / d, a / d
        print(
            f"{batch_size:>5}  {epochs:>6}  {t:>17,.0f}  {d:>20,.0f}  {t / d:>5.2f}x  {a:>22,.0f}  {a / d:>5.2f}x",
            flush=True,
        )

    first = 32 if 32 in ratios else next(iter(ratios))
    rest = "".join(f"; batch {b} = {r:.1f}x" for b, r in ratios.items() if b != first)
    print(
        f"SUMMARY trainer: trainer/DataLoader samples/s at batch {first} ({device.type}) = {ratios[first]:.1f}x{rest}"
        f" (with the autograd step: {autograd_ratios[first]:.1f}x at batch {first})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
