"""Search-space entries: float, int, categorical, and conditional (one range per value of a parent)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from service.spec.limits import MAX_CHOICE_CHARS, MAX_CHOICES, MAX_FLOAT_STEPS, MAX_INT
from service.spec.strict import Strict


def _finite(value: float, field: str) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value}")
    return value


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"a number of {len(text.lstrip('-'))} digits"


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low >= high:
        raise ValueError(f"low must be < high, got low={low} high={high}")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got low={low}")
    if log and step is not None:
        raise ValueError("log and step cannot be combined: choose a log scale or a step")
    if step is not None and step <= 0:
        raise ValueError(f"step must be > 0, got {step}")


class FloatParam(Strict):
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
        # Optuna computes high - low (and, with a step, their ratio in Decimal) on every claim.
        if not math.isfinite(self.high - self.low):
            raise ValueError(f"high - low must be a finite number, got low={self.low} high={self.high}")
        if self.step is not None and (self.high - self.low) / self.step > MAX_FLOAT_STEPS:
            raise ValueError(f"step: {self.step} makes more than {MAX_FLOAT_STEPS} steps from low to high; use a larger step")
        return self

    def grid_size(self) -> int:
        """Points of this range as a grid axis (factories.py: low, low + step, ... up to high)."""
        assert self.step is not None
        return math.ceil((self.high - self.low) / self.step + 0.5)

    def check_value(self, value: Any) -> Any:
        """A value given for this parameter (an enqueued trial, a carried-over one) is one the
        sampler could have drawn: a number in [low, high], on the step's grid if there is one."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{value} is outside [{self.low}, {self.high}]")
        if self.step is not None:
            steps = (value - self.low) / self.step
            if abs(steps - round(steps)) > 1e-8 * max(1.0, abs(steps)):
                raise ValueError(f"{value} is not on the grid {self.low} + k * {self.step}")
        return float(value)


class IntParam(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        for bound in ("low", "high"):
            if abs(getattr(self, bound)) > MAX_INT:
                # Optuna stores every parameter as a float: beyond 2^53 an int is not kept exactly.
                raise ValueError(f"{bound} must be between -{MAX_INT} and {MAX_INT} (2^53), got {_short(getattr(self, bound))}")
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self

    def grid_size(self) -> int:
        return (self.high - self.low) // self.step + 1

    def check_value(self, value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON and YAML may write 64 as 64.0
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{value} is outside [{self.low}, {self.high}]")
        if (value - self.low) % self.step:
            raise ValueError(f"{value} is not on the grid {self.low} + k * {self.step}")
        return value


Choice = Union[bool, int, float, str, None]


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1, max_length=MAX_CHOICES)

    @field_validator("choices")
    @classmethod
    def _unique(cls, v: list[Choice]) -> list[Choice]:
        for c in v:
            if isinstance(c, float):
                _finite(c, "choices")
            if isinstance(c, str) and len(c) > MAX_CHOICE_CHARS:
                raise ValueError(f"a choice is at most {MAX_CHOICE_CHARS} characters, got one of {len(c)}")
        if len({repr(c) for c in v}) != len(v):
            raise ValueError(f"choices must be unique, got {v}")
        return v

    def grid_size(self) -> int:
        return len(self.choices)

    def check_value(self, value: Any) -> Any:
        # By type too: True is not the choice 1, nor 1.0 the choice "1".
        if not any(type(c) is type(value) and c == value for c in self.choices):
            raise ValueError(f"{value!r} is not one of the choices {self.choices}")
        return value


Plain = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


def case_key(value: Any) -> str:
    """How a parent's value is written as a key of `cases` (YAML and JSON keys are strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


class ConditionalParam(Strict):
    """A parameter whose range depends on another parameter's value, e.g. lr per optimizer:

        lr: {type: conditional, on: optimizer,
             cases: {sgd: {type: float, low: 0.01, high: 0.1, log: true},
                     adam: {type: float, low: 0.001, high: 0.01, log: true}}}

    A parent value without a case leaves the parameter out of that trial (momentum only for sgd),
    and the worker uses the fixed value or default. Sampled define-by-run, parent first."""

    type: Literal["conditional"]
    on: str = Field(min_length=1, description="the parent: a categorical in the space, or a fixed workload value")
    cases: dict[str, Plain] = Field(min_length=1)

    def n_choices(self) -> int:
        return sum(len(c.choices) for c in self.cases.values() if isinstance(c, CategoricalParam))

    def case_for(self, parent_value: Any) -> FloatParam | IntParam | CategoricalParam | None:
        return self.cases.get(case_key(parent_value))


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam, ConditionalParam], Field(discriminator="type")]
PlainParam = Union[FloatParam, IntParam, CategoricalParam]


def active_order(space: dict[str, Any]) -> list[str]:
    """Parameter names with every parent before its children (parents are never conditional)."""
    plain = [n for n, p in space.items() if not isinstance(p, ConditionalParam)]
    return plain + [n for n, p in space.items() if isinstance(p, ConditionalParam)]
