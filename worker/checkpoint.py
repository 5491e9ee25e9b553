"""The trainer's checkpoint format: reading checkpoint bytes back, and the digest of the
configuration a checkpoint may be resumed by (worker/trainer.py, `Training.checkpoint`)."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import torch

from service.spec import Workload

# The version of the checkpoint layout (Training.checkpoint); another version is not resumed from.
CHECKPOINT_FORMAT = "hpo-checkpoint/1"
# The workload fields a checkpoint must agree on (with all the hyperparameters) to be resumed.
_CONFIG_FIELDS = (
    "model",
    "dataset",
    "epochs",
    "seed",
    "val_fraction",
    "precision",
    "divergence_factor",
    "block",
    "fast_step",
)


class CheckpointError(ValueError):
    """Checkpoint bytes that this trial cannot resume from: unreadable, another format, or made
    for other hyperparameters or another workload."""


def load_checkpoint(data: bytes) -> dict[str, Any]:
    """The dict inside checkpoint bytes (tensors on the CPU); CheckpointError if it is not one."""
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated upload, another format, a pickle we refuse to run
        raise CheckpointError(f"unreadable checkpoint: {type(exc).__name__}: {exc}") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"not a {CHECKPOINT_FORMAT} checkpoint (found {found!r})")
    return saved


def config_digest(workload: Workload, hp: dict[str, Any]) -> str:
    """What a checkpoint must have been made with to be resumed by this run."""
    shape = {name: getattr(workload, name) for name in _CONFIG_FIELDS}
    shape["dataset"] = workload.dataset.model_dump(mode="json")
    text = json.dumps({"workload": shape, "hp": hp}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
