"""K built-in models of one shape as one: their parameters stacked along a new first dimension,
and a forward pass that runs all K in the same few kernels.

The mlp's Linear layers become batched matrix products (baddbmm over (K, batch, features)); the
cnn's convolutions become one grouped convolution (groups=K) over the members' channels side by
side, which is how HFTA fuses convolutions. Each member sees its own inputs (its own data order)
and its own dropout masks, so members may be at different epochs. The cnn's backward is
autograd's, on the sum of the members' losses: each member's gradient is its own loss's, the
members share nothing but kernels. The mlp trains through worker/fused/stacked_mlp_step.py (the
same forward, and its backward by hand); `forward` here also scores it on the validation set.

The stack's order is the member's `model.parameters()` order, so member j's i-th parameter is
`stack[i][j]`, and its nn.Module holds views of those slices (`stack_parameters`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worker.mlp_step import mlp_layers


@dataclass(frozen=True)
class _Conv:
    padding: int
    pool: bool  # MaxPool2d(2) after its ReLU


class StackedShape:
    """The layout of one built-in model kind, read from a member's nn.Module: which of its
    parameters are which layer, and how to run K of them at once."""

    def __init__(self, model_kind: str, model: nn.Module) -> None:
        self.kind = model_kind
        if model_kind == "mlp":
            layers = mlp_layers(model)
            if layers is None:
                raise ValueError("only an mlp without batchnorm can be fused")
            self.convs: list[_Conv] = []
        elif model_kind == "cnn":
            self.convs = _cnn_convs(model)
        else:
            raise ValueError(f"model {model_kind!r} cannot be fused")

    def forward(self, params: list[torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor | None]) -> torch.Tensor:
        """The K members' outputs (K, batch, n_outputs) for their inputs `x` (K, batch, *input).
        `masks`: the mlp's one per hidden layer (K, batch, width), the cnn's one before the
        classifier (K, batch, features); None where no member drops out."""
        if self.kind == "mlp":
            return _mlp_forward(params, x, masks)
        return _cnn_forward(self.convs, params, x, masks)


def dropout_of(model: nn.Module) -> float:
    """A member's dropout rate: every dropout layer of a built-in model has the trial's one."""
    rates = {float(m.p) for m in model.modules() if isinstance(m, nn.Dropout)}
    return rates.pop() if rates else 0.0


def _mlp_forward(params: list[torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor | None]) -> torch.Tensor:
    k, b = x.shape[0], x.shape[1]
    h = x.reshape(k, b, -1)
    n = len(params) // 2
    for i in range(n):
        weight, bias = params[2 * i], params[2 * i + 1]
        h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        if i < n - 1:
            # ReLU then the mask: relu(x) * m == relu(x * m) for m >= 0, so either block order.
            h = h.relu()
            if masks[i] is not None:
                h = h * masks[i]
    return h


def _cnn_forward(
    convs: list[_Conv], params: list[torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor | None]
) -> torch.Tensor:
    k, b = x.shape[0], x.shape[1]
    # The members' images side by side along the channels: (batch, K * channels, H, W), member-major.
    h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
    for i, conv in enumerate(convs):
        weight, bias = params[2 * i], params[2 * i + 1]
        h = F.conv2d(h, weight.flatten(0, 1), bias.flatten(), padding=conv.padding, groups=k)
        h = h.relu()
        if conv.pool:
            h = F.max_pool2d(h, 2)
    features = h.mean(dim=(2, 3)).view(b, k, -1).transpose(0, 1)  # AdaptiveAvgPool2d(1), Flatten
    if masks and masks[0] is not None:
        features = features * masks[0]
    weight, bias = params[-2], params[-1]
    return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))


def _cnn_convs(model: nn.Module) -> list[_Conv]:
    """The conv blocks of what worker.models.build_cnn builds without batchnorm; ValueError otherwise."""
    refused = ValueError("only a cnn without batchnorm can be fused")
    modules = list(model) if isinstance(model, nn.Sequential) else []
    convs: list[_Conv] = []
    i = 0
    while i + 1 < len(modules) and isinstance(modules[i], nn.Conv2d):
        conv = modules[i]
        if conv.bias is None or conv.groups != 1 or conv.stride != (1, 1) or not isinstance(modules[i + 1], nn.ReLU):
            raise refused
        pool = i + 2 < len(modules) and isinstance(modules[i + 2], nn.MaxPool2d)
        convs.append(_Conv(padding=int(conv.padding[0]), pool=pool))
        i += 3 if pool else 2
    tail = [type(m) for m in modules[i:]]
    allowed = ([nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear], [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear])
    if not convs or tail not in allowed:
        raise refused
    return convs


def stack_parameters(models: list[nn.Module]) -> list[torch.Tensor]:
    """New leaf tensors (requires_grad) holding the members' parameters stacked, and each member's
    parameters re-pointed at its slice, so its state_dict reads (and load_state_dict writes) the
    stack."""
    per_member = [list(m.parameters()) for m in models]
    stacked = [torch.stack([p.detach() for p in group]).requires_grad_(True) for group in zip(*per_member)]
    for j, params in enumerate(per_member):
        for i, p in enumerate(params):
            p.data = stacked[i].detach()[j]
    return stacked
