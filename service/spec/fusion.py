"""Which trials of a study can be trained fused (as one batched model: worker/fused/), and which
may differ between the members of one fused group.

Members share everything that shapes the computation: the workload (every trial of a study has
the same one), the model's sizes, the batch size and the optimizer's update rule. They may differ
in every per-trial scalar, which the fused trainer holds as one value per member: the learning
rate, its schedule (any kind, with its knobs and warmup), weight decay, momentum, betas, eps,
dropout (a member without dropout has masks of ones) and gradient clipping.

Not fused (each such trial trains alone, as before):
  - batchnorm: BatchNorm's running statistics and per-batch normalisation are per model; under a
    stacked forward they would need per-member buffers and eval/train switching per member, which
    the built-in models do not have (HFTA and torch.func have the same limit);
  - bf16 precision, and the mlp with `fast_step: false`: the fused step reproduces the dropout
    masks and arithmetic of the fp32 trainer paths it replaces, not autocast's rounding;
  - plugin and command workloads: the worker does not see inside the user's model.
Pure on purpose, like the rest of service.spec: the service groups claims by this key and the
worker checks it again before it stacks a group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.spec.workload import Workload

# The largest group a worker may ask for (--fuse K, claim-group's max_trials).
MAX_GROUP = 64
# The optimizers worker/fused/stacked_optim.py steps with one value per member.
FUSED_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam")
# The hyperparameters that shape a model's tensors or its update rule, per built-in model: equal
# within a fused group.
SHAPE_PARAMS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden_size", "n_layers", "batch_size", "optimizer", "nesterov"),
    "cnn": ("channels", "n_blocks", "kernel_size", "batch_size", "optimizer", "nesterov"),
}


def group_params(model: str) -> tuple[str, ...]:
    """The params a group claim pins to its first member's values: the shape, and batchnorm,
    which decides whether a trial can be fused at all."""
    return (*SHAPE_PARAMS.get(model, ()), "batchnorm")


def not_fusable(workload: Workload, hp: Mapping[str, Any]) -> str | None:
    """Why a trial of `workload` with the full hyperparameters `hp` cannot be fused; None if it can."""
    if workload.model not in SHAPE_PARAMS:
        return f"the {workload.model} workload runs the team's own code"
    if workload.precision != "fp32":
        return f"precision {workload.precision} (fused trials run in fp32)"
    if workload.model == "mlp" and not workload.fast_step:
        return "fast_step is false"
    if hp.get("batchnorm"):
        return "batchnorm is on (BatchNorm keeps per-model statistics)"
    if hp.get("optimizer") not in FUSED_OPTIMIZERS:
        return f"optimizer {hp.get('optimizer')!r} has no fused step"
    return None


def fusion_key(workload: Workload, hp: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Trials of one study with equal keys can be fused together; None: this one trains alone.
    Nesterov is in the key because it changes SGD's update rule; for other optimizers it is
    ignored by the trainer, so it is left out of their key."""
    if not_fusable(workload, hp) is not None:
        return None
    names = SHAPE_PARAMS[workload.model]
    return (workload.model, *(hp.get(n) if n != "nesterov" or hp.get("optimizer") == "sgd" else None for n in names))
