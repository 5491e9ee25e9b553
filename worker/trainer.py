"""One trial's training loop, as a generator of per-epoch results.

A generator so the caller owns control flow: it reports each epoch, and can stop at any
epoch boundary (pruned, lease lost, SIGTERM) by simply no longer iterating or calling close().
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from service.spec import Workload
from worker.data import load_split
from worker.models import build_mlp

# Validation is scored in chunks so its memory use stays flat if larger datasets arrive.
EVAL_CHUNK = 4096


@dataclass
class EpochResult:
    epoch: int  # 1-based, so it can be reported directly as the pruner's step
    val_loss: float
    train_loss: float
    val_accuracy: float


def train(workload: Workload, hp: dict[str, Any], device: str | torch.device) -> Iterator[EpochResult]:
    """Train `workload` with hyperparameters `hp`, yielding one EpochResult per epoch.

    Stops after the first epoch whose validation loss is not finite (a diverged run, usually
    a learning rate that is too high); that epoch is still yielded so the caller can record it.

    Seeds torch's global RNG (model initialisation and dropout draw from it), so the same
    workload seed and `hp` give the same results; don't interleave two of these generators
    in one process if that matters.
    """
    if workload.model != "mlp":
        raise ValueError(f"unknown model {workload.model!r}; allowed: mlp")
    device = torch.device(device)
    # torch accepts seeds up to 64 bits; a workload seed is any int.
    seed = workload.seed % 2**63
    torch.manual_seed(seed)

    data = load_split(workload.dataset, val_fraction=workload.val_fraction, seed=workload.seed, device=device)
    model = build_mlp(
        data.n_features,
        data.n_classes,
        hidden_size=int(hp["hidden_size"]),
        n_layers=int(hp["n_layers"]),
        dropout=float(hp["dropout"]),
    ).to(device)
    optimizer = _optimizer(model, hp)
    batch_size = int(hp["batch_size"])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    # A generator of its own on the device, so the shuffle order depends only on the seed,
    # not on whatever else used the global RNG in between.
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(seed)
    n_train = data.x_train.shape[0]
    starts = range(0, n_train, batch_size)

    for epoch in range(1, workload.epochs + 1):
        model.train()
        # One gather per epoch; each batch is then a view (a slice), which keeps batch_size=1
        # cheap: no per-batch index tensor, no DataLoader, no host round trip.
        order = torch.randperm(n_train, device=device, generator=shuffle)
        x_epoch, y_epoch = data.x_train[order], data.y_train[order]
        # Summed on the device: a .item() per batch would synchronise with the device every step.
        train_sum = torch.zeros((), device=device)
        for start in starts:
            xb = x_epoch[start : start + batch_size]
            yb = y_epoch[start : start + batch_size]
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Weighted by the batch's length so a short last batch counts per sample.
            train_sum.add_(loss.detach(), alpha=xb.shape[0])

        val_sum, correct = _evaluate(model, data.x_val, data.y_val)
        # The epoch's single host synchronisation.
        train_total, val_total, n_correct = torch.stack([train_sum, val_sum, correct]).tolist()
        n_val = data.x_val.shape[0]
        result = EpochResult(
            epoch=epoch,
            val_loss=val_total / n_val,
            train_loss=train_total / n_train,
            val_accuracy=n_correct / n_val,
        )
        yield result
        if not math.isfinite(result.val_loss):
            return


def _optimizer(model: torch.nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
    name = hp["optimizer"]
    lr = float(hp["lr"])
    weight_decay = float(hp["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(hp["momentum"]), weight_decay=weight_decay)
    if name == "adam":
        # β1 = 0.9, β2 = 0.999, ε = 1e-8 "rarely need tuning" (../shared/HYPERPARAMETERS.md,
        # Optimizers); `momentum` does not apply to Adam, whose β1 plays that role.
        params = list(model.parameters())
        kwargs = dict(lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
        try:
            # The fused kernel is the same algorithm in one call per step instead of a dozen
            # small ops per parameter: about half the time per step at batch_size=1 on CPU.
            return torch.optim.Adam(params, fused=True, **kwargs)
        except RuntimeError:
            # A device (or an older torch) without a fused Adam.
            return torch.optim.Adam(params, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; allowed: sgd, adam")


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of correct predictions, both still on the device."""
    model.eval()  # dropout off
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for start in range(0, x.shape[0], EVAL_CHUNK):
        xb, yb = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
    return loss_sum, correct
