"""Datasets a worker trains on, held whole on the target device.

The datasets are small enough to live on the device for the whole trial, so the trainer can
batch by slicing resident tensors instead of paying a DataLoader's per-batch host work.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

# Only bundled datasets: a worker may run where nothing can be downloaded.
DATASETS: tuple[str, ...] = ("digits",)


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_features: int
    n_classes: int


def load_split(dataset: str, *, val_fraction: float, seed: int, device: torch.device | str) -> Split:
    """The train/validation split of `dataset`, fixed by `seed`, standardized, on `device`."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    x_train, y_train, x_val, y_val, n_classes = _arrays(dataset, float(val_fraction), int(seed))
    # torch.tensor copies, so the cached arrays can never be changed through a trial's tensors.
    return Split(
        x_train=torch.tensor(x_train, device=device),
        y_train=torch.tensor(y_train, device=device),
        x_val=torch.tensor(x_val, device=device),
        y_val=torch.tensor(y_val, device=device),
        n_features=x_train.shape[1],
        n_classes=n_classes,
    )


@functools.lru_cache(maxsize=16)
def _arrays(dataset: str, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    # Cached per process: a worker runs many trials of the same study back to back, and the
    # split must be the same for all of them anyway.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    n_classes = int(y.max()) + 1
    # sklearn accepts only seeds in [0, 2**32); a workload's seed is any int.
    random_state = seed % 2**32
    try:
        # Stratified, so every class is represented in validation in its usual proportion.
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=val_fraction, random_state=random_state, stratify=y
        )
    except ValueError:
        # Too few validation (or training) samples to hold every class: stratifying is impossible,
        # a plain random split still works.
        x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=val_fraction, random_state=random_state)

    # Statistics from the training split only, so nothing about validation leaks into training.
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    # Digits has pixels that are constant (always 0) in training; leave them centred, not divided by 0.
    std[std == 0] = 1.0
    x_train = ((x_train - mean) / std).astype(np.float32)
    x_val = ((x_val - mean) / std).astype(np.float32)
    arrays = (x_train, y_train.astype(np.int64), x_val, y_val.astype(np.int64))
    for a in arrays:
        a.setflags(write=False)  # shared by every caller of the cache
    return (*arrays, n_classes)
