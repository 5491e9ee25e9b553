"""Search-space entries: float, int, categorical, and conditional (one range per value of a parent)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _finite(value: float, field: str) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low >= high:
        raise ValueError(f"low must be < high, got low={low} high={high}")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got low={low}")
    if log and step is not None:
        raise ValueError("log and step cannot be combined: choose a log scale or a step")
    if step is not None and step <= 0:
        raise ValueError(f"step must be > 0, got {step}")


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
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
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


Plain = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


def case_key(value: Any) -> str:
    """How a parent's value is written as a key of `cases` (YAML and JSON keys are strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


class ConditionalParam(_Strict):
    """A parameter whose range depends on another parameter's value, e.g. lr per optimizer:

        lr: {type: conditional, on: optimizer,
             cases: {sgd: {type: float, low: 0.01, high: 0.1, log: true},
                     adam: {type: float, low: 0.001, high: 0.01, log: true}}}

    A parent value without a case leaves the parameter out of that trial (momentum only for sgd),
    and the worker uses the fixed value or default. Sampled define-by-run, parent first."""

    type: Literal["conditional"]
    on: str = Field(min_length=1, description="the parent: a categorical in the space, or a fixed workload value")
    cases: dict[str, Plain] = Field(min_length=1)

    def case_for(self, parent_value: Any) -> FloatParam | IntParam | CategoricalParam | None:
        return self.cases.get(case_key(parent_value))


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam, ConditionalParam], Field(discriminator="type")]
PlainParam = Union[FloatParam, IntParam, CategoricalParam]


def active_order(space: dict[str, Any]) -> list[str]:
    """Parameter names with every parent before its children (parents are never conditional)."""
    plain = [n for n, p in space.items() if not isinstance(p, ConditionalParam)]
    return plain + [n for n, p in space.items() if isinstance(p, ConditionalParam)]
