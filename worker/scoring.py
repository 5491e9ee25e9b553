"""How a built-in workload is scored: its loss function, the precision its forward passes run
in, and the validation pass (summed on the device, in chunks). Shared by the trainer and the
LR range test (worker/lr_finder.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.spec import Workload
from worker.data import Split

# Validation is scored in chunks so its memory use stays flat whatever the dataset's size.
EVAL_CHUNK = 4096
# The cnn's activations are much larger per sample than the mlp's: smaller validation chunks.
CNN_EVAL_CHUNK = 256


def _loss_fn(data: Split) -> Callable[..., torch.Tensor]:
    return F.cross_entropy if data.task == "classification" else F.mse_loss


def _autocast(workload: Workload, device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if workload.precision == "bf16":

        def autocast() -> contextlib.AbstractContextManager[Any]:
            return torch.autocast(device.type, dtype=torch.bfloat16)

        return autocast
    return contextlib.nullcontext


def _eval_chunk(workload: Workload, hp: dict[str, Any]) -> int:
    return max(CNN_EVAL_CHUNK if workload.model == "cnn" else EVAL_CHUNK, int(hp["batch_size"]))


@torch.no_grad()
def _evaluate(
    model: nn.Module, data: Split, loss_fn: Any, autocast: Any, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-sample validation loss and number of correct predictions (0 for regression),
    both still on the device. Per sample, a regression's MSE is the mean over its outputs."""
    model.eval()  # dropout off, BatchNorm on its running statistics
    x, y = data.x_val, data.y_val
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    classify = data.task == "classification"
    for start in range(0, x.shape[0], chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        with autocast():
            out = model(xb)
        out = out.float()
        if classify:
            loss_sum += loss_fn(out, yb, reduction="sum")
            correct += (out.argmax(dim=1) == yb).sum()
        else:
            loss_sum += loss_fn(out, yb, reduction="sum") / out.shape[1]
    return loss_sum, correct
