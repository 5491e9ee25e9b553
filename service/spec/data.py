"""Where a workload's data comes from. Nothing is ever downloaded: bundled scikit-learn sets,
synthetic data, or files under the worker's data root (HPO_DATA_ROOT on the worker).

The service checks what it can see (a path is relative and stays inside the root); the worker
checks the rest (symlinks) when it resolves the path, and fails the trial with the reason."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from service.spec.strict import Strict

# scikit-learn ships these with the package; diabetes is the regression one.
BUNDLED: dict[str, Literal["classification", "regression"]] = {
    "digits": "classification",
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
}
# Image-shaped inputs (channels, height, width), which the cnn model needs.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}

Task = Literal["classification", "regression"]
# The worker holds the whole dataset in memory; past this it would only be killed and retried.
MAX_SYNTHETIC_VALUES = 2**29


class BundledData(Strict):
    kind: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"]

    @property
    def task(self) -> Task:
        return BUNDLED[self.kind]

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return IMAGE_SHAPES.get(self.kind)


class SyntheticData(Strict):
    """sklearn's make_classification / make_regression: any size, for throughput tests too."""

    kind: Literal["synthetic"]
    task: Task = "classification"
    n_samples: int = Field(2000, ge=10, le=10_000_000)
    n_features: int = Field(20, ge=1, le=100_000)
    n_classes: int = Field(2, ge=2, le=1000, description="classification only")
    noise: float = Field(0.1, ge=0.0, le=1e6, description="regression: output noise; classification: label flips")
    seed: int = 0

    image_shape: None = None

    @model_validator(mode="after")
    def _fits(self) -> SyntheticData:
        if self.task == "classification" and self.noise > 1:
            raise ValueError(f"noise: for classification it is the fraction of labels flipped, in [0, 1]; got {self.noise}")
        if self.n_samples * self.n_features > MAX_SYNTHETIC_VALUES:
            raise ValueError(
                f"n_samples x n_features: {self.n_samples * self.n_features} values is more than "
                f"{MAX_SYNTHETIC_VALUES} (2 GiB of float32 on every worker)"
            )
        return self


def check_relative_path(path: str) -> str:
    """A path under the data root: relative, and without '..' that could climb out of it."""
    if not path or path.strip() != path:
        raise ValueError("path must be a non-empty relative path under the worker's data root")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or path.startswith("~"):
        raise ValueError(f"path {path!r} is absolute; give a path relative to the worker's data root")
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        raise ValueError(f"path {path!r} leaves the worker's data root ('..' is not allowed)")
    if "\x00" in path:
        raise ValueError("path must not contain NUL bytes")
    return path


class _FileData(Strict):
    path: str = Field(description="relative to the worker's data root (HPO_DATA_ROOT)")

    @field_validator("path")
    @classmethod
    def _inside_root(cls, v: str) -> str:
        return check_relative_path(v)


class NpzData(_FileData):
    """An .npz with arrays X (samples first; 4-D means images N,C,H,W) and y."""

    kind: Literal["npz"]
    task: Task = "classification"

    @property
    def image_shape(self) -> None:
        return None  # known only once the worker opens the file


class CsvData(_FileData):
    """A CSV with a header row; `target` names the label column, every other column is a feature."""

    kind: Literal["csv"]
    target: str = Field(min_length=1)
    task: Task = "classification"

    @property
    def image_shape(self) -> None:
        return None


class MnistData(_FileData):
    """A directory with MNIST's IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, gzipped or not)."""

    kind: Literal["mnist"]
    task: Literal["classification"] = "classification"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPES["mnist"]


class CifarData(_FileData):
    """A directory with CIFAR's python pickle batches (cifar-10-batches-py or cifar-100-python)."""

    kind: Literal["cifar10", "cifar100"]
    task: Literal["classification"] = "classification"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPES[self.kind]


Dataset = Annotated[
    Union[BundledData, SyntheticData, NpzData, CsvData, MnistData, CifarData], Field(discriminator="kind")
]
DATASET_KINDS = ("digits", "iris", "wine", "breast_cancer", "diabetes", "synthetic", "npz", "csv", "mnist", "cifar10", "cifar100")


def dataset_shorthand(value: Any) -> Any:
    """`dataset: digits` is short for `dataset: {kind: digits}`."""
    return {"kind": value} if isinstance(value, str) else value
