"""Models a worker can train."""

from __future__ import annotations

from torch import nn


def build_mlp(n_features: int, n_classes: int, *, hidden_size: int, n_layers: int, dropout: float) -> nn.Module:
    """`n_layers` hidden Linear+ReLU layers of width `hidden_size`, then a Linear to `n_classes`."""
    if n_layers < 1 or hidden_size < 1:
        raise ValueError(f"n_layers and hidden_size must be >= 1, got {n_layers} and {hidden_size}")
    if not 0.0 <= dropout < 1.0:
        # 1.0 would zero every activation; spec.MLP_PARAMS allows [0, 1) for the same reason.
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = n_features
    for _ in range(n_layers):
        # Dropout after the activation, so it sits between fully connected layers, where
        # ../shared/HYPERPARAMETERS.md (Regularisation) says it belongs.
        layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden_size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)
