"""Which hyperparameters each built-in workload understands, their allowed values and defaults.

Defaults and ranges come from ../shared/HYPERPARAMETERS.md; each table cites its section.
A plugin or command workload understands whatever names its own code reads, so it has no
table here (see `rules_for`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ParamRule:
    """The values a workload accepts for one hyperparameter, searched or fixed."""

    kind: Literal["float", "int", "categorical"]
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: the value must be strictly greater than `low`
    high_open: bool = False  # True: the value must be strictly less than `high`
    choices: tuple[Any, ...] = ()
    help: str = ""

    def allowed(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{self.kind} in {lo}{self.low:g}, {high}{hi}"

    def accepts(self, value: Any) -> bool:
        if self.kind == "categorical":
            # `True == 1` in Python; a bool matches only a bool choice, and a number only a number.
            return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


OPTIMIZERS: tuple[str, ...] = ("sgd", "adagrad", "rmsprop", "adam", "adamw", "adamax", "nadam", "adadelta")
SCHEDULES: tuple[str, ...] = ("constant", "time_based", "linear", "exponential", "step", "cosine", "plateau")
# Which optimizers read which of the optional knobs (everything reads lr and weight_decay).
MOMENTUM_OPTIMIZERS = ("sgd",)
BETA_OPTIMIZERS = ("adam", "adamw", "adamax", "nadam")
EPS_OPTIMIZERS = ("adagrad", "rmsprop", "adam", "adamw", "adamax", "nadam", "adadelta")

# Initial LR ranges that usually work from scratch (HYPERPARAMETERS.md, "Learning rate").
# AdamW is Adam with decoupled weight decay, so it shares Adam's range.
USUAL_LR: dict[str, tuple[float, float]] = {
    "sgd": (1e-2, 1e-1),
    "sgd_momentum": (1e-3, 1e-2),
    "adagrad": (1e-3, 1e-2),
    "adadelta": (1e-2, 1e-1),
    "rmsprop": (1e-3, 1e-2),
    "adam": (1e-3, 1e-2),
    "adamw": (1e-3, 1e-2),
    "adamax": (1e-3, 1e-2),
    "nadam": (1e-3, 1e-2),
}

# Shared by every built-in model: the optimizer, its schedule and the batch.
TRAINING_PARAMS: dict[str, ParamRule] = {
    "lr": ParamRule("float", 1e-2, low=0.0, high=10.0, low_open=True, help="initial learning rate"),
    "batch_size": ParamRule("int", 64, low=1, high=1024),
    "optimizer": ParamRule("categorical", "adam", choices=OPTIMIZERS),
    # Momentum 0.9 and Adam's β1 0.9, β2 0.999, ε 1e-8 are the defaults that "rarely need tuning".
    "momentum": ParamRule("float", 0.9, low=0.0, high=1.0, high_open=True, help="sgd only"),
    "nesterov": ParamRule("categorical", False, choices=(False, True), help="sgd only, needs momentum > 0"),
    "beta1": ParamRule("float", 0.9, low=0.0, high=1.0, high_open=True, help="adam, adamw, adamax, nadam"),
    "beta2": ParamRule("float", 0.999, low=0.0, high=1.0, high_open=True, help="adam, adamw, adamax, nadam"),
    "eps": ParamRule("float", 1e-8, low=0.0, high=1.0, low_open=True, help="every optimizer but sgd"),
    # 5e-4 is "a common fixed value" (Regularisation).
    "weight_decay": ParamRule("float", 5e-4, low=0.0, high=1.0),
    # Max global gradient norm; 0 turns clipping off.
    "grad_clip": ParamRule("float", 0.0, low=0.0, high=1e6),
    "schedule": ParamRule("categorical", "constant", choices=SCHEDULES),
    # Linear warmup over the first epochs, before any schedule.
    "warmup_epochs": ParamRule("int", 0, low=0, high=1000),
    # time_based: lr = lr0 / (1 + lr_decay * t), t in epochs after warmup.
    "lr_decay": ParamRule("float", 0.1, low=0.0, high=1e3),
    # linear: decays to lr0 * lr_floor at epoch decay_epochs (0: the last epoch), then stays;
    # cosine: anneals to lr0 * lr_floor at the last epoch.
    "lr_floor": ParamRule("float", 0.01, low=0.0, high=1.0),
    "decay_epochs": ParamRule("int", 0, low=0, high=10_000),
    # exponential and step; None: 0.95 for exponential, 0.1 for step.
    "gamma": ParamRule("float", None, low=0.0, high=1.0, low_open=True),
    "step_size": ParamRule("int", 10, low=1, high=10_000),
    # Reduce on plateau: "divide the LR by 2 to 10", so a factor in [0.1, 0.5] is usual.
    "plateau_factor": ParamRule("float", 0.5, low=0.0, high=1.0, low_open=True, high_open=True),
    "plateau_patience": ParamRule("int", 2, low=0, high=1000),
}

KERNEL_SIZES = (1, 3, 5, 7)  # "usually chosen from 7x7, 5x5, 3x3, 1x1" (Capacity parameters)

MLP_PARAMS: dict[str, ParamRule] = {
    **TRAINING_PARAMS,
    # Dropout [0, 1): 1.0 would zero every activation; 0.2-0.5 is the usual search range.
    "dropout": ParamRule("float", 0.2, low=0.0, high=1.0, high_open=True),
    "hidden_size": ParamRule("int", 128, low=1, high=8192),
    "n_layers": ParamRule("int", 2, low=1, high=16),
    "batchnorm": ParamRule("categorical", False, choices=(False, True)),
}

CNN_PARAMS: dict[str, ParamRule] = {
    **TRAINING_PARAMS,
    "dropout": ParamRule("float", 0.2, low=0.0, high=1.0, high_open=True, help="before the classifier"),
    "channels": ParamRule("int", 32, low=1, high=1024, help="width of the first conv block; doubles per block"),
    "n_blocks": ParamRule("int", 2, low=1, high=6),
    "kernel_size": ParamRule("categorical", 3, choices=KERNEL_SIZES),
    "batchnorm": ParamRule("categorical", False, choices=(False, True)),
}

BUILTIN_MODELS: dict[str, dict[str, ParamRule]] = {"mlp": MLP_PARAMS, "cnn": CNN_PARAMS}
USER_MODELS: tuple[str, ...] = ("plugin", "command")
MODELS: tuple[str, ...] = (*BUILTIN_MODELS, *USER_MODELS)

# A user workload's parameter names become environment variables (HPO_PARAM_<NAME>).
USER_PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


def rules_for(model: str) -> dict[str, ParamRule] | None:
    """The rules of a built-in model; None for user workloads, which accept any valid name."""
    return BUILTIN_MODELS.get(model)


def defaults_for(model: str) -> dict[str, Any]:
    rules = rules_for(model)
    return {} if rules is None else {name: rule.default for name, rule in rules.items()}
