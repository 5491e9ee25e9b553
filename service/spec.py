"""The study definition: what a team posts, what the service stores, what the worker trains.

Pure pydantic on purpose: the service validates with it and the worker imports it to read
its assignment, so it must not pull in FastAPI, SQLAlchemy or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Study and team names end up in URLs and in Optuna's `<team>/<study>` names, so they stay
# to a conservative, documented pattern.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
NAME_RULE = "1-63 characters: lowercase letters, digits, '_', '.', '-'; starting with a letter or digit"


def _finite(value: float, field: str) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @field_validator("low", "high", "step")
    @classmethod
    def _is_finite(cls, v: float | None, info: Any) -> float | None:
        return v if v is None else _finite(v, info.field_name)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        return self


Choice = Union[bool, int, float, str, None]


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _unique(cls, v: list[Choice]) -> list[Choice]:
        for c in v:
            if isinstance(c, float):
                _finite(c, "choices")
        if len({repr(c) for c in v}) != len(v):
            raise ValueError(f"choices must be unique, got {v}")
        return v


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low >= high:
        raise ValueError(f"low must be < high, got low={low} high={high}")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got low={low}")
    if log and step is not None:
        raise ValueError("log and step cannot be combined: choose a log scale or a step")
    if step is not None and step <= 0:
        raise ValueError(f"step must be > 0, got {step}")


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


# --- what each workload understands -------------------------------------------------------


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

    def allowed(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{self.kind} in {lo}{self.low:g}, {high}{hi}"

    def accepts(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
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


# Defaults and bounds follow ../shared/HYPERPARAMETERS.md: batch size 1-1024, dropout in [0, 1)
# (0.2-0.5 is the usual search range), momentum 0.9, weight decay 5e-4 as the common fixed value.
MLP_PARAMS: dict[str, ParamRule] = {
    "lr": ParamRule("float", 1e-2, low=0.0, high=10.0, low_open=True),
    "batch_size": ParamRule("int", 64, low=1, high=1024),
    "dropout": ParamRule("float", 0.2, low=0.0, high=1.0, high_open=True),
    "weight_decay": ParamRule("float", 5e-4, low=0.0, high=1.0),
    "momentum": ParamRule("float", 0.9, low=0.0, high=1.0, high_open=True),
    "optimizer": ParamRule("categorical", "adam", choices=("sgd", "adam")),
    "hidden_size": ParamRule("int", 128, low=1, high=8192),
    "n_layers": ParamRule("int", 2, low=1, high=16),
}

WORKLOAD_PARAMS: dict[str, dict[str, ParamRule]] = {"mlp": MLP_PARAMS}
DATASETS: dict[str, tuple[str, ...]] = {"mlp": ("digits",)}


class Workload(BaseModel):
    """What to train. Hyperparameters that are not searched are fixed here, by name."""

    model_config = ConfigDict(extra="allow")

    model: Literal["mlp"] = "mlp"
    dataset: Literal["digits"] = "digits"
    epochs: int = Field(10, ge=1, le=10_000)
    seed: int = 0
    # Fraction of the data held out for validation; the split is fixed by `seed`.
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    @property
    def fixed(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_fixed_values(self) -> Workload:
        rules = WORKLOAD_PARAMS[self.model]
        for name, value in self.fixed.items():
            if name not in rules:
                raise ValueError(
                    f"workload.{name}: unknown parameter for workload '{self.model}'; "
                    f"allowed: {', '.join(sorted(rules))}"
                )
            if not rules[name].accepts(value):
                raise ValueError(f"workload.{name}: {value!r} is not allowed; expected {rules[name].allowed()}")
        return self


class Sampler(_Strict):
    kind: Literal["tpe", "random", "grid", "qmc", "cmaes"] = "tpe"
    seed: int | None = None


class MedianPruner(_Strict):
    kind: Literal["median"]
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: int = Field(1, ge=1)
    n_min_trials: int = Field(1, ge=1)


class NoPruner(_Strict):
    kind: Literal["none"]


Pruner = Annotated[Union[MedianPruner, NoPruner], Field(discriminator="kind")]


class Budget(_Strict):
    n_trials: int = Field(20, ge=1, le=1_000_000)
    max_concurrent: int = Field(8, ge=1, le=10_000)
    max_retries: int = Field(0, ge=0, le=100)


class StudySpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_RULE)
    direction: Literal["minimize", "maximize"] = "minimize"
    workload: Workload = Field(default_factory=Workload)
    space: dict[str, Param] = Field(default_factory=dict)
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=lambda: MedianPruner(kind="median"))
    budget: Budget = Field(default_factory=Budget)

    @model_validator(mode="after")
    def _space_fits_workload(self) -> StudySpec:
        rules = WORKLOAD_PARAMS[self.workload.model]
        if self.workload.dataset not in DATASETS[self.workload.model]:
            raise ValueError(f"workload.dataset: '{self.workload.dataset}' is not available for '{self.workload.model}'")
        for name, param in self.space.items():
            where = f"space.{name}"
            rule = rules.get(name)
            if rule is None:
                raise ValueError(
                    f"{where}: unknown parameter for workload '{self.workload.model}'; "
                    f"allowed: {', '.join(sorted(rules))}"
                )
            if name in self.workload.fixed:
                raise ValueError(f"{where}: '{name}' is both fixed in workload and searched in space; keep one")
            _check_param_against_rule(where, param, rule)
        if self.sampler.kind == "grid":
            for name, param in self.space.items():
                if isinstance(param, FloatParam) and param.step is None:
                    raise ValueError(f"space.{name}: the grid sampler needs a step on float parameters (or a categorical)")
        return self


def _check_param_against_rule(where: str, param: Any, rule: ParamRule) -> None:
    if rule.kind == "categorical":
        if not isinstance(param, CategoricalParam):
            raise ValueError(f"{where}: must be categorical; expected {rule.allowed()}")
        bad = [c for c in param.choices if not rule.accepts(c)]
        if bad:
            raise ValueError(f"{where}.choices: {bad} not allowed; expected {rule.allowed()}")
        return
    if isinstance(param, CategoricalParam):
        bad = [c for c in param.choices if not rule.accepts(c)]
        if bad:
            raise ValueError(f"{where}.choices: {bad} not allowed; expected {rule.allowed()}")
        return
    if rule.kind == "int" and isinstance(param, FloatParam):
        raise ValueError(f"{where}.type: must be int (or categorical); expected {rule.allowed()}")
    for bound in ("low", "high"):
        value = getattr(param, bound)
        if not rule.accepts(value):
            raise ValueError(f"{where}.{bound}: {value} is outside the allowed range; expected {rule.allowed()}")


# --- what the service hands a worker -------------------------------------------------------


class Assignment(BaseModel):
    """A claimed trial, as the worker receives it."""

    trial_id: int
    lease_id: str
    study: str
    number: int
    params: dict[str, Any]
    workload: Workload
    lease_seconds: float
    heartbeat_seconds: float
    direction: Literal["minimize", "maximize"] = "minimize"

    def hyperparameters(self) -> dict[str, Any]:
        """Searched params from the service win over the workload's fixed values and defaults."""
        rules = WORKLOAD_PARAMS[self.workload.model]
        values = {name: rule.default for name, rule in rules.items()}
        values.update(self.workload.fixed)
        values.update(self.params)
        return values


FinishState = Literal["complete", "pruned", "failed"]
