"""The LR range test (Smith 2015, "Cyclical Learning Rates"; fastai's lr_find) for the built-in
models: one short run that raises the lr by a constant factor after every batch, from
`finder.low` to `finder.high`, recording the smoothed training loss, and stops once the loss
blows up. The service reads the curve (service.spec.lr_range.suggest_range)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from service.spec import Workload
from service.spec.lr_range import LrFinder
from worker.data import load_split
from worker.models import build_model, uses_batchnorm
from worker.optim import build_optimizer
from worker.scoring import _autocast, _loss_fn

# The first few smoothed values rest on very few batches; divergence is not judged on them.
SETTLE_STEPS = 5


def lr_range_test(
    workload: Workload,
    hp: dict[str, Any],
    finder: LrFinder,
    device: str | torch.device,
    *,
    data_root: Path | None = None,
) -> Iterator[tuple[int, float, float]]:
    """Yields (step, lr, smoothed loss) per batch until the last step or divergence (a loss that
    is not finite, or a smoothed loss above `finder.divergence_factor` x its minimum)."""
    device = torch.device(device)
    torch.manual_seed(workload.seed % 2**63)
    data = load_split(workload.dataset, val_fraction=workload.val_fraction, seed=workload.seed, device=device, data_root=data_root)
    model = build_model(workload.model, data.input_shape, data.n_outputs, hp, workload.block).to(device)
    batch_size = int(hp["batch_size"])
    if uses_batchnorm(model) and batch_size == 1:
        raise ValueError("batchnorm needs batch_size >= 2: BatchNorm cannot normalise a batch of one sample")
    optimizer = build_optimizer(model.parameters(), {**hp, "lr": finder.low})
    loss_fn = _loss_fn(data)
    autocast = _autocast(workload, device)
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(workload.seed % 2**63)
    n_train = data.x_train.shape[0]
    model.train()
    avg, best = 0.0, math.inf
    batches = _batches(n_train, batch_size, device, shuffle)
    for step in range(finder.steps):
        lr = finder.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = next(batches)
        xb, yb = data.x_train[index], data.y_train[index]
        with autocast():
            out = model(xb)
        loss = loss_fn(out.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # One read per batch: the curve needs every point, and the run is short.
        value = loss.item()
        if not math.isfinite(value):
            return
        avg = finder.smoothing * avg + (1 - finder.smoothing) * value
        smoothed = avg / (1 - finder.smoothing ** (step + 1))
        if not math.isfinite(smoothed):
            return
        yield step, lr, smoothed
        best = min(best, smoothed)
        if step >= SETTLE_STEPS and smoothed > finder.divergence_factor * best:
            return


def _batches(n: int, batch_size: int, device: torch.device, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index tensors of shuffled batches, epoch after epoch (a short dataset is cycled)."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]
