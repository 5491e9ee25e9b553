"""Which device a worker trains on, and giving a device's memory back after a trial."""

from __future__ import annotations

import gc


def pick_device(requested: str | None) -> str:
    """The device asked for, else CUDA when there is one, else the CPU."""
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def release_device_memory(device: str) -> None:
    """After an out-of-memory failure or an abandoned trial: collect what the trial left, and
    return the allocator's cached blocks, so the next trial starts with the whole device."""
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
