"""Datasets a worker trains on, held whole on the target device.

The datasets are small enough to live on the device for the whole trial, so the trainer can
batch by slicing resident tensors instead of paying a DataLoader's per-batch host work.

Where the data comes from is a study's `dataset` (service/spec/data.py): a bundled scikit-learn
set, synthetic data, or files under this worker's data root (HPO_DATA_ROOT). Nothing is ever
downloaded. Whatever the source, a trial gets the same treatment:

- validation is cut from the (training) data: `val_fraction` of it, fixed by the workload seed,
  stratified by class for classification (a plain random split where stratifying is impossible);
- inputs are standardized with training statistics only: per feature for tabular data, per channel
  for images (per-pixel statistics would blow up MNIST's almost-always-black border pixels);
  a constant feature or channel is only centred;
- regression targets are standardized the same way, so the validation MSE is in units of the
  training targets' standard deviation, comparable across datasets and not dominated by their scale;
- classification labels become class indices 0..K-1 in sorted order of the distinct labels
  (numbers numerically, strings alphabetically), and K is the model's number of outputs.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, TypeAdapter, ValidationError

from service.spec.data import (
    DATASET_KINDS,
    BundledData,
    CifarData,
    CsvData,
    Dataset,
    MnistData,
    NpzData,
    SyntheticData,
    dataset_shorthand,
)
from worker import datafiles
from worker.datafiles import DataError, resolve_under_root

__all__ = ["DataError", "Split", "load_split", "resolve_under_root"]

Task = Literal["classification", "regression"]

# A synthetic set larger than this (values in X) is refused rather than risking the worker being
# killed for memory, which would only make the service retry the trial on the next worker.
MAX_SYNTHETIC_VALUES = 2**29  # 2 GiB as float32


@dataclass
class Split:
    x_train: torch.Tensor  # float32, (N, *input_shape), on the device
    y_train: torch.Tensor  # classification: int64 (N,); regression: float32 (N, n_outputs)
    x_val: torch.Tensor
    y_val: torch.Tensor
    input_shape: tuple[int, ...]  # (F,) for tabular data, (C, H, W) for images
    n_outputs: int  # number of classes, or number of regression targets
    task: Task

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)


def load_split(
    dataset: Any,
    *,
    val_fraction: float,
    seed: int,
    device: torch.device | str,
    data_root: Path | None = None,
) -> Split:
    """The train/validation split of `dataset` (a service.spec.data model; `"digits"` or a dict
    is accepted too), fixed by `seed`, standardized, on `device`. Raises DataError on bad data."""
    ds = _as_dataset(dataset)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    arrays = _prepared(_source(ds, data_root), float(val_fraction), int(seed))
    x_train, y_train, x_val, y_val, input_shape, n_outputs, task = arrays
    device = torch.device(device)
    return Split(
        x_train=_to_device(x_train, device),
        y_train=_to_device(y_train, device),
        x_val=_to_device(x_val, device),
        y_val=_to_device(y_val, device),
        input_shape=input_shape,
        n_outputs=n_outputs,
        task=task,
    )


_DATASET = TypeAdapter(Dataset)


def _as_dataset(dataset: Any) -> Any:
    if isinstance(dataset, BaseModel):
        return dataset
    try:
        return _DATASET.validate_python(dataset_shorthand(dataset))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(
            f"invalid dataset {dataset!r}: {where + ': ' if where else ''}{first['msg']} "
            f"(kinds: {', '.join(DATASET_KINDS)})"
        ) from None


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A copy of `a` on `device`: the cached arrays can never be changed through a trial's tensors."""
    if device.type != "cuda":
        return torch.tensor(a, device=device)
    # Through pinned host memory, so the copy is a DMA that does not stall the host. Once the
    # pinned buffer is dropped, torch's caching host allocator keeps it until the copy finishes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": it is only read
        host = torch.from_numpy(a)
    return host.pin_memory().to(device, non_blocking=True)


# --- what to load, as a hashable cache key -----------------------------------------------------


@dataclass(frozen=True)
class _Source:
    spec: str  # the dataset's JSON
    files: tuple[Path, ...]  # resolved, inside the data root
    stamps: tuple[tuple[int, int], ...]  # (mtime_ns, size) of each file: an edited file is reread
    dataset: Any = field(compare=False, hash=False)  # the model itself; `spec` stands for it in the key


def _source(ds: Any, data_root: Path | None) -> _Source:
    files: list[Path] = []
    if isinstance(ds, (NpzData, CsvData, MnistData, CifarData)):
        if data_root is None:
            raise DataError("no data root configured on this worker (HPO_DATA_ROOT)")
        root = Path(data_root)
        if isinstance(ds, NpzData):
            files = datafiles.npz_files(root, ds.path)
        elif isinstance(ds, CsvData):
            files = datafiles.csv_files(root, ds.path)
        elif isinstance(ds, MnistData):
            files = datafiles.mnist_files(root, ds.path)
        else:
            files = datafiles.cifar_files(root, ds.path, ds.kind)
    stamps = tuple((s.st_mtime_ns, s.st_size) for s in (f.stat() for f in files))
    return _Source(ds.model_dump_json(), tuple(files), stamps, ds)


# --- raw arrays, per kind ----------------------------------------------------------------------


def _raw(source: _Source) -> tuple[np.ndarray, np.ndarray, Task, int]:
    """x (samples first, any numeric dtype), y (int64 class indices or float64 (N, k)), task, n_outputs."""
    ds = source.dataset
    if isinstance(ds, BundledData):
        return _bundled(ds.kind)
    if isinstance(ds, SyntheticData):
        return _synthetic(ds)
    if isinstance(ds, MnistData):
        x, y = datafiles.read_mnist(list(source.files))
        return x, y.astype(np.int64), "classification", 10
    if isinstance(ds, CifarData):
        x, y = datafiles.read_cifar(list(source.files), ds.kind)
        return x, y.astype(np.int64), "classification", 10 if ds.kind == "cifar10" else 100
    if isinstance(ds, NpzData):
        x, y = datafiles.read_npz(source.files[0], ds.path)
        if x.dtype.kind not in "biuf" or x.ndim not in (2, 4):
            raise DataError(
                f"{ds.path}: X must be numeric and 2-D (samples, features) or 4-D images (N, C, H, W); "
                f"got {x.dtype} of shape {x.shape}"
            )
    else:
        assert isinstance(ds, CsvData)
        x, y = datafiles.read_csv(source.files[0], ds.path, ds.target)
    if len(y) != len(x):
        raise DataError(f"{ds.path}: X has {len(x)} samples but y has {len(y)}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{ds.path}: the features hold NaN or infinite values")
    if ds.task == "classification":
        labels, n_classes = _class_indices(y, ds.path)
        return x, labels, "classification", n_classes
    targets = _regression_targets(y, ds.path)
    return x, targets, "regression", targets.shape[1]


def _bundled(kind: str) -> tuple[np.ndarray, np.ndarray, Task, int]:
    from sklearn import datasets

    x, y = getattr(datasets, f"load_{kind}")(return_X_y=True)
    if kind == "diabetes":
        return x, y.reshape(-1, 1), "regression", 1
    if kind == "digits":
        x = x.reshape(-1, 1, 8, 8)  # image-shaped, so a CNN can use it; an MLP flattens
    return x, y.astype(np.int64), "classification", int(y.max()) + 1


def _synthetic(ds: SyntheticData) -> tuple[np.ndarray, np.ndarray, Task, int]:
    from sklearn.datasets import make_classification, make_regression

    n, f, k = ds.n_samples, ds.n_features, ds.n_classes
    if n * f > MAX_SYNTHETIC_VALUES:
        raise DataError(
            f"synthetic data of {n} x {f} = {n * f} values is too large to hold "
            f"(at most {MAX_SYNTHETIC_VALUES}); use fewer samples or features"
        )
    random_state = ds.seed % 2**32  # sklearn accepts only seeds in [0, 2**32)
    if ds.task == "regression":
        x, y = make_regression(
            n_samples=n, n_features=f, n_informative=min(f, 10), noise=ds.noise, random_state=random_state
        )
        return x.astype(np.float32), y.reshape(-1, 1), "regression", 1
    if not 0.0 <= ds.noise <= 1.0:
        raise DataError(
            f"synthetic classification: noise is the fraction of labels flipped at random and must be in [0, 1], "
            f"got {ds.noise}"
        )
    # make_classification puts each class's clusters on vertices of a hypercube in the informative
    # dimensions, so it needs n_classes * n_clusters_per_class <= 2**n_informative. About half the
    # features informative (at most 32: the cost grows with its square), a quarter redundant
    # (linear combinations), the rest noise.
    clusters = 2 if 2 * k <= 2 ** min(f, 32) else 1
    if k * clusters > 2 ** min(f, 32):
        x, y = _blobs(n, f, k, ds.noise, random_state)
    else:
        need = math.ceil(math.log2(k * clusters))
        informative = min(f, max(need, min(32, max(2, f // 2))))
        x, y = make_classification(
            n_samples=n,
            n_features=f,
            n_informative=informative,
            n_redundant=(f - informative) // 2,
            n_repeated=0,
            n_classes=k,
            n_clusters_per_class=clusters,
            flip_y=ds.noise,
            random_state=random_state,
        )
    return x.astype(np.float32), y.astype(np.int64), "classification", k


def _blobs(n: int, f: int, k: int, flip: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """More classes than make_classification can place in so few features (k > 2**f): one
    Gaussian blob per class around a random centre, with a fraction `flip` of labels redrawn."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(k, f))
    y = rng.integers(k, size=n)
    x = centres[y] + rng.standard_normal((n, f))
    flipped = rng.random(n) < flip
    y[flipped] = rng.integers(k, size=int(flipped.sum()))
    return x, y


def _class_indices(y: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """Labels -> indices into the sorted distinct labels (numbers numerically, strings alphabetically)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: classification labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind in "US":
        try:
            y = y.astype(np.float64)  # "0", "1", "2" from a CSV are numbers, sorted as such
        except ValueError:
            pass  # class names
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise DataError(
                f"{where}: task is classification but the labels are not all whole numbers "
                "(for continuous targets use task: regression)"
            )
    elif y.dtype.kind not in "biuUS":
        raise DataError(f"{where}: labels of dtype {y.dtype} are neither numbers nor strings")
    classes, indices = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{where}: classification needs at least 2 classes; the labels hold {len(classes)}")
    return indices.astype(np.int64).reshape(-1), len(classes)


def _regression_targets(y: np.ndarray, where: str) -> np.ndarray:
    try:
        y = y.astype(np.float64)
    except ValueError as exc:
        raise DataError(f"{where}: task is regression but the targets are not all numbers ({exc})") from None
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] == 0:
        raise DataError(f"{where}: regression targets must be 1-D or 2-D (samples, targets), got shape {y.shape}")
    if not np.isfinite(y).all():
        raise DataError(f"{where}: the targets hold NaN or infinite values")
    return y


# --- split and standardize, cached -------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _prepared(
    source: _Source, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, ...], int, Task]:
    # Cached per process: a worker runs many trials of the same study back to back, and the split
    # must be the same for all of them anyway. Few entries: an entry can be CIFAR-sized (~0.6 GB).
    from sklearn.model_selection import train_test_split

    x, y, task, n_outputs = _raw(source)
    random_state = seed % 2**32  # sklearn accepts only seeds in [0, 2**32); a workload's seed is any int
    index = np.arange(len(x))
    try:
        if task != "classification":
            raise ValueError("regression: no classes to stratify by")
        # Stratified, so every class is represented in validation in its usual proportion.
        train, val = train_test_split(index, test_size=val_fraction, random_state=random_state, stratify=y)
    except ValueError:
        # Too few validation (or training) samples to hold every class: stratifying is impossible,
        # a plain random split still works.
        try:
            train, val = train_test_split(index, test_size=val_fraction, random_state=random_state)
        except ValueError as exc:
            raise DataError(f"cannot split {len(x)} samples with val_fraction={val_fraction}: {exc}") from None

    # Images: scaling pixels to [0, 1] first would change nothing once they are standardized.
    x_train = x[train].astype(np.float32, copy=False)
    x_val = x[val].astype(np.float32, copy=False)
    del x
    # Statistics from the training split only, so nothing about validation leaks into training.
    _standardize(x_train, x_val)
    y_train, y_val = y[train], y[val]
    if task == "regression":
        y_train, y_val = y_train.astype(np.float32), y_val.astype(np.float32)
        _standardize(y_train, y_val)
    arrays = (x_train, y_train, x_val, y_val)
    for a in arrays:
        a.setflags(write=False)  # shared by every caller of the cache
    return (*arrays, tuple(x_train.shape[1:]), n_outputs, task)


def _standardize(train: np.ndarray, val: np.ndarray) -> None:
    """In place, with `train`'s mean and standard deviation over every axis but axis 1 (features
    of (N, F), channels of (N, C, H, W)). A constant feature is only centred, not divided by 0."""
    mean, std = _moments(train)
    std[std == 0] = 1.0
    shape = (1, -1) + (1,) * (train.ndim - 2)
    for a in (train, val):
        a -= mean.astype(np.float32).reshape(shape)
        a /= std.astype(np.float32).reshape(shape)


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation in float64, in two passes over row chunks, so the
    float64 temporaries stay small even for CIFAR-sized arrays."""
    axes = (0, *range(2, x.ndim))
    count = max(1, x.size // max(1, x.shape[1]))
    rows = max(1, 2**22 // max(1, x[0].size)) if len(x) else 1
    total = np.zeros(x.shape[1])
    for start in range(0, len(x), rows):
        total += x[start : start + rows].sum(axis=axes, dtype=np.float64)
    mean = total / count
    shape = (1, -1) + (1,) * (x.ndim - 2)
    squares = np.zeros(x.shape[1])
    for start in range(0, len(x), rows):
        d = x[start : start + rows].astype(np.float64) - mean.reshape(shape)
        squares += np.square(d).sum(axis=axes)
    return mean, np.sqrt(squares / count)
