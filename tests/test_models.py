"""The built-in models: layer layout from the hyperparameters, and shapes through them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.spec import CNN_PARAMS, MLP_PARAMS
from worker.models import MAX_CHANNELS, build_model

MLP = {name: rule.default for name, rule in MLP_PARAMS.items()}
CNN = {name: rule.default for name, rule in CNN_PARAMS.items()}


def kinds(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model]


def test_mlp_default_block() -> None:
    model = build_model("mlp", (64,), 10, dict(MLP, hidden_size=32, n_layers=3, dropout=0.3, batchnorm=True), None)
    assert kinds(model) == ["Flatten"] + ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 3 + ["Linear"]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 32), (32, 10)]
    assert model(torch.zeros(5, 64)).shape == (5, 10)


@pytest.mark.parametrize(
    "block",
    [
        ["linear", "relu", "batchnorm", "dropout"],
        ["linear", "dropout", "relu", "batchnorm"],
        ["linear", "relu", "dropout", "batchnorm"],
    ],
)
def test_mlp_block_order_is_the_layer_order(block: list[str]) -> None:
    hp = dict(MLP, hidden_size=16, n_layers=2, dropout=0.5, batchnorm=True)
    model = build_model("mlp", (64,), 3, hp, block)
    name = {"linear": "Linear", "batchnorm": "BatchNorm1d", "relu": "ReLU", "dropout": "Dropout"}
    assert kinds(model) == ["Flatten"] + [name[k] for k in block] * 2 + ["Linear"]
    model.train()
    assert model(torch.randn(4, 64)).shape == (4, 3)


def test_mlp_leaves_out_batchnorm_and_dropout_when_off() -> None:
    model = build_model("mlp", (64,), 10, dict(MLP, hidden_size=8, n_layers=2, dropout=0.0, batchnorm=False), None)
    assert kinds(model) == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_mlp_flattens_images() -> None:
    model = build_model("mlp", (1, 8, 8), 10, dict(MLP, hidden_size=8, n_layers=1), None)
    assert model[1].in_features == 64
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_mlp_regression_outputs() -> None:
    model = build_model("mlp", (10,), 2, dict(MLP, hidden_size=8), None)
    assert model(torch.zeros(3, 10)).shape == (3, 2)


def test_mlp_rejects_a_bad_block() -> None:
    with pytest.raises(ValueError, match="starting with linear"):
        build_model("mlp", (4,), 2, MLP, ["relu", "linear", "batchnorm", "dropout"])


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
def test_cnn_kernel_sizes_keep_the_spatial_size(kernel_size: int) -> None:
    hp = dict(CNN, channels=4, n_blocks=2, kernel_size=kernel_size)
    model = build_model("cnn", (1, 8, 8), 10, hp, None)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size for m in convs] == [(kernel_size, kernel_size)] * 2
    # "Same" padding: only the pooling shrinks the image, 8 -> 4 -> 2.
    assert model[:2](torch.zeros(1, 1, 8, 8)).shape == (1, 4, 8, 8)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_cnn_layout() -> None:
    hp = dict(CNN, channels=8, n_blocks=3, kernel_size=3, dropout=0.25, batchnorm=True)
    model = build_model("cnn", (3, 32, 32), 100, hp, None)
    block = ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert kinds(model) == block * 3 + ["AdaptiveAvgPool2d", "Flatten", "Dropout", "Linear"]
    assert [m.out_channels for m in model if isinstance(m, nn.Conv2d)] == [8, 16, 32]
    assert model[-1].in_features == 32
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_cnn_without_batchnorm_and_dropout() -> None:
    model = build_model("cnn", (1, 8, 8), 10, dict(CNN, channels=4, n_blocks=1, dropout=0.0), None)
    assert kinds(model) == ["Conv2d", "ReLU", "MaxPool2d", "AdaptiveAvgPool2d", "Flatten", "Linear"]


def test_cnn_many_blocks_on_digits_stop_pooling_at_one_pixel() -> None:
    hp = dict(CNN, channels=2, n_blocks=6, kernel_size=3, batchnorm=True)
    model = build_model("cnn", (1, 8, 8), 10, hp, None)
    # 8 -> 4 -> 2 -> 1: three pools, then the remaining blocks run on a 1x1 map.
    assert kinds(model).count("MaxPool2d") == 3
    assert kinds(model).count("Conv2d") == 6
    model.train()
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_cnn_channels_are_capped() -> None:
    model = build_model("cnn", (1, 8, 8), 10, dict(CNN, channels=512, n_blocks=3, kernel_size=1), None)
    assert [m.out_channels for m in model if isinstance(m, nn.Conv2d)] == [512, MAX_CHANNELS, MAX_CHANNELS]


def test_cnn_needs_images() -> None:
    with pytest.raises(ValueError, match="image-shaped"):
        build_model("cnn", (64,), 10, CNN, None)


def test_cnn_rejects_even_kernels() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        build_model("cnn", (1, 8, 8), 10, dict(CNN, kernel_size=2), None)


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="mlp, cnn"):
        build_model("plugin", (4,), 2, MLP, None)
