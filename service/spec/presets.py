"""Presets: the search ranges ../shared/HYPERPARAMETERS.md recommends, per optimizer.

`preset: adam` in a study definition adds these entries to `space` (and fixes the optimizer in
the workload); anything the definition states itself wins. The expansion is stored, so the
stored definition shows exactly what is searched."""

from __future__ import annotations

from typing import Any

from service.spec.hyperparameters import USUAL_LR

# Batch size 1-1024 on a log scale (powers of two are what matters), dropout 0.2-0.5 between
# fully connected layers, weight decay "0 to 1e-4": on a log scale from 1e-6, where it is as good as 0.
COMMON_SPACE: dict[str, dict[str, Any]] = {
    "batch_size": {"type": "int", "low": 1, "high": 1024, "log": True},
    "dropout": {"type": "float", "low": 0.2, "high": 0.5},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
}
# Fine-tuning a pretrained model wants an initial LR one to two orders of magnitude lower:
# the range's low end drops by 100x, its high end by 10x.
FINETUNE_LOW, FINETUNE_HIGH = 1e-2, 1e-1

PRESETS: dict[str, dict[str, Any]] = {
    "sgd": {"optimizer": "sgd", "fixed": {"momentum": 0.0}},
    # Typical momentum values are 0.5, 0.9 and 0.99 (Optimizers).
    "sgd_momentum": {"optimizer": "sgd", "space": {"momentum": {"type": "categorical", "choices": [0.5, 0.9, 0.99]}}},
    "adam": {"optimizer": "adam"},
    "adamw": {"optimizer": "adamw"},
    "adamax": {"optimizer": "adamax"},
    "nadam": {"optimizer": "nadam"},
    "rmsprop": {"optimizer": "rmsprop"},
    "adagrad": {"optimizer": "adagrad"},
    "adadelta": {"optimizer": "adadelta"},
}
PRESET_NAMES = tuple(PRESETS)


def lr_range(preset: str, finetune: bool) -> tuple[float, float]:
    low, high = USUAL_LR[preset]
    return (low * FINETUNE_LOW, high * FINETUNE_HIGH) if finetune else (low, high)


def expand(preset: str, finetune: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(space entries, fixed workload values) of a preset."""
    entry = PRESETS[preset]
    low, high = lr_range(preset, finetune)
    space = {"lr": {"type": "float", "low": low, "high": high, "log": True}, **COMMON_SPACE, **entry.get("space", {})}
    fixed = {"optimizer": entry["optimizer"], **entry.get("fixed", {})}
    return space, fixed


def apply(data: dict[str, Any]) -> dict[str, Any]:
    """A raw definition with its preset merged in; explicit `space` and workload values win."""
    preset = data.get("preset")
    if preset is None or preset not in PRESETS:
        return data  # an unknown name is reported by the field's own validation
    space_in = data.get("space") or {}
    workload_in = data.get("workload") or {}
    if not isinstance(space_in, dict) or not isinstance(workload_in, dict):
        return data
    space_add, fixed_add = expand(preset, bool(data.get("finetune", False)))
    explicit = set(space_in) | set(workload_in)
    space = {**{k: v for k, v in space_add.items() if k not in explicit}, **space_in}
    workload = {**{k: v for k, v in fixed_add.items() if k not in explicit}, **workload_in}
    return {**data, "space": space, "workload": workload}
