"""The built-in models a worker can train: `mlp` and `cnn`.

Their hyperparameters, with defaults and allowed values, are `service.spec.MLP_PARAMS` and
`service.spec.CNN_PARAMS`; `hp` here is always the full dict of one of them (defaults filled in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

from torch import nn

from service.spec.hyperparameters import KERNEL_SIZES
from service.spec.workload import BLOCK_LAYERS, DEFAULT_BLOCK

# The widest conv block: `channels` doubles per block, and 6 blocks of 1024 would start at 32768.
MAX_CHANNELS = 1024


def build_model(
    workload_model: str,
    input_shape: Sequence[int],
    n_outputs: int,
    hp: Mapping[str, Any],
    block: Sequence[str] | None = None,
) -> nn.Module:
    """The untrained model `workload_model` ("mlp" or "cnn") for inputs of `input_shape` (one
    sample, without the batch dimension) and `n_outputs` outputs (classes or regression targets).

    `block` is the mlp's layer order inside each hidden block (`Workload.block`); the cnn ignores it.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    if workload_model == "mlp":
        return build_mlp(
            prod(input_shape),
            n_outputs,
            hidden_size=int(hp["hidden_size"]),
            n_layers=int(hp["n_layers"]),
            dropout=float(hp["dropout"]),
            batchnorm=bool(hp["batchnorm"]),
            block=DEFAULT_BLOCK if block is None else block,
        )
    if workload_model == "cnn":
        return build_cnn(
            input_shape,
            n_outputs,
            channels=int(hp["channels"]),
            n_blocks=int(hp["n_blocks"]),
            kernel_size=int(hp["kernel_size"]),
            dropout=float(hp["dropout"]),
            batchnorm=bool(hp["batchnorm"]),
        )
    raise ValueError(f"unknown built-in model {workload_model!r}; allowed: mlp, cnn")


def build_mlp(
    n_features: int,
    n_outputs: int,
    *,
    hidden_size: int,
    n_layers: int,
    dropout: float,
    batchnorm: bool = False,
    block: Sequence[str] = DEFAULT_BLOCK,
) -> nn.Sequential:
    """Flatten, then `n_layers` hidden blocks of width `hidden_size`, then a Linear to `n_outputs`.

    Each hidden block holds its layers in the order `block` (a permutation of linear, batchnorm,
    relu, dropout that starts with linear). BatchNorm1d is left out unless `batchnorm`, Dropout
    unless `dropout` > 0. The default order puts dropout after the activation, between fully
    connected layers, where ../shared/HYPERPARAMETERS.md (Regularisation) says it belongs.
    Flatten comes first so image-shaped inputs (N, C, H, W) work too.
    """
    if n_features < 1 or n_layers < 1 or hidden_size < 1:
        raise ValueError(
            f"n_features, n_layers and hidden_size must be >= 1, got {n_features}, {n_layers} and {hidden_size}"
        )
    _check_dropout(dropout)
    block = list(block)
    if sorted(block) != sorted(BLOCK_LAYERS) or block[0] != "linear":
        raise ValueError(f"block must list {', '.join(BLOCK_LAYERS)} once each, starting with linear; got {block}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = n_features
    for _ in range(n_layers):
        for kind in block:
            if kind == "linear":
                layers.append(nn.Linear(width, hidden_size))
                width = hidden_size
            elif kind == "batchnorm" and batchnorm:
                layers.append(nn.BatchNorm1d(hidden_size))
            elif kind == "relu":
                layers.append(nn.ReLU())
            elif kind == "dropout" and dropout > 0:
                layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def build_cnn(
    input_shape: Sequence[int],
    n_outputs: int,
    *,
    channels: int,
    n_blocks: int,
    kernel_size: int,
    dropout: float,
    batchnorm: bool = False,
) -> nn.Sequential:
    """`n_blocks` conv blocks, global average pooling, dropout, then a Linear to `n_outputs`.

    Block i: Conv2d to min(`channels` * 2**i, MAX_CHANNELS) channels with "same" padding,
    BatchNorm2d (if `batchnorm`), ReLU, and MaxPool2d(2) while both spatial sides are still >= 2
    (so many blocks on 8x8 digits still work: pooling stops at 1x1). Dropout sits right before
    the classifier, the one fully connected layer (HYPERPARAMETERS.md, Regularisation); it is
    left out when `dropout` is 0.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"the cnn model needs image-shaped inputs (channels, height, width), got input shape {shape}; "
            "use the mlp model for tabular data"
        )
    if kernel_size not in KERNEL_SIZES:
        # Odd sizes only: padding kernel_size // 2 keeps the spatial size only for odd kernels.
        raise ValueError(f"kernel_size must be one of {', '.join(map(str, KERNEL_SIZES))}, got {kernel_size}")
    if n_blocks < 1 or channels < 1:
        raise ValueError(f"n_blocks and channels must be >= 1, got {n_blocks} and {channels}")
    _check_dropout(dropout)
    in_channels, height, width = shape
    layers: list[nn.Module] = []
    for i in range(n_blocks):
        out_channels = min(channels * 2**i, MAX_CHANNELS)
        # No conv bias before BatchNorm: its shift would be subtracted right away.
        layers.append(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batchnorm)
        )
        if batchnorm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_channels, n_outputs))
    return nn.Sequential(*layers)


def uses_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        # 1.0 would zero every activation; spec.MLP_PARAMS and CNN_PARAMS allow [0, 1) for the same reason.
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
