"""What a trial trains: a built-in model on a dataset, or the team's own code (plugin, command).

Hyperparameters that are not searched are fixed here, by name, next to the workload fields."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.spec.data import BundledData, Dataset, dataset_shorthand
from service.spec.hyperparameters import MODELS, USER_MODELS, USER_PARAM_NAME, rules_for

BLOCK_LAYERS = ("linear", "batchnorm", "relu", "dropout")
# The usual order: normalise the pre-activation, then drop out between fully connected layers
# (HYPERPARAMETERS.md, Regularisation). BatchNorm and dropout are skipped when turned off.
DEFAULT_BLOCK = ["linear", "batchnorm", "relu", "dropout"]

Scalar = bool | int | float | str | None


class Workload(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Literal["mlp", "cnn", "plugin", "command"] = Field("mlp", description=f"one of {', '.join(MODELS)}")
    dataset: Dataset = Field(default_factory=lambda: BundledData(kind="digits"))
    epochs: int = Field(10, ge=1, le=10_000)
    seed: int = 0
    # Fraction of the data held out for validation; the split is fixed by `seed`.
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # bf16 autocast for the forward pass (on GPUs with bf16; CPU supports it too, slowly).
    precision: Literal["fp32", "bf16"] = "fp32"
    # The divergence guard: a training loss above this multiple of the first batch's loss (or
    # NaN/inf) stops the trial within the epoch, pruned with the reason `diverged`.
    divergence_factor: float = Field(10.0, gt=1.0, le=1e12)
    # Save a checkpoint after every epoch (built-in models), so a retried trial resumes from it.
    checkpoint: bool = True
    # mlp: train with the hand-written step of worker/mlp_step.py when the model allows it (no
    # batchnorm, fp32): the same gradients, a fraction of eager autograd's per-step cost on small
    # batches. false: always through autograd (nn.Module forward, loss.backward()).
    fast_step: bool = True
    # mlp: the order of layers inside each hidden block.
    block: list[Literal["linear", "batchnorm", "relu", "dropout"]] = Field(default_factory=lambda: list(DEFAULT_BLOCK))
    # plugin: `package.module:function`, or the name of an entry point in group `hpo.workloads`.
    entry: str | None = Field(None, min_length=1, max_length=300)
    # command: the script the worker runs (relative to the worker's working directory, or absolute),
    # with the trial's params in the environment and in a JSON file.
    command: str | None = Field(None, min_length=1, max_length=1000)
    args: list[str] = Field(default_factory=list, max_length=100)
    # plugin and command: kill the trial's process after this long (the worker's default otherwise).
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 24 * 3600)

    @field_validator("dataset", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return dataset_shorthand(v)

    @field_validator("block")
    @classmethod
    def _block_order(cls, v: list[str]) -> list[str]:
        if sorted(v) != sorted(BLOCK_LAYERS) or v[0] != "linear":
            raise ValueError(f"must list {', '.join(BLOCK_LAYERS)} once each, starting with linear; got {v}")
        return v

    @property
    def fixed(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def is_builtin(self) -> bool:
        return self.model not in USER_MODELS

    @model_validator(mode="after")
    def _consistent(self) -> Workload:
        if self.model == "plugin" and not self.entry:
            raise ValueError("workload.entry: a plugin workload needs `entry` (module:function or an entry-point name)")
        if self.model == "command" and not self.command:
            raise ValueError("workload.command: a command workload needs `command` (the script to run)")
        if self.entry and self.model != "plugin":
            raise ValueError("workload.entry: only a plugin workload takes `entry`")
        if self.command and self.model != "command":
            raise ValueError("workload.command: only a command workload takes `command`")
        if self.model == "cnn" and self.dataset.kind in ("iris", "wine", "breast_cancer", "diabetes", "synthetic", "csv"):
            raise ValueError(
                f"workload.dataset: the cnn model needs image-shaped data (digits, mnist, cifar10, cifar100, "
                f"or an npz with 4-D X); '{self.dataset.kind}' is tabular"
            )
        _check_fixed(self.model, self.fixed)
        return self


def _check_fixed(model: str, fixed: dict[str, Any]) -> None:
    rules = rules_for(model)
    for name, value in fixed.items():
        if rules is None:
            if not re.fullmatch(USER_PARAM_NAME, name):
                raise ValueError(f"workload.{name}: a parameter name must match {USER_PARAM_NAME}")
            if not isinstance(value, Scalar):
                raise ValueError(f"workload.{name}: a fixed value must be a number, string, boolean or null")
            continue
        if name not in rules:
            raise ValueError(
                f"workload.{name}: unknown parameter for workload '{model}'; allowed: {', '.join(sorted(rules))}"
            )
        if not rules[name].accepts(value):
            raise ValueError(f"workload.{name}: {value!r} is not allowed; expected {rules[name].allowed()}")
