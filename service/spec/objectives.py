"""Several objectives at once: `objectives: [{name: val_loss}, {name: params_m}]`.

A multi-objective study is Optuna's: one direction per objective, a Pareto front instead of one
best trial. Each objective is the trial's value (`val_loss`, the validation loss the built-in
workloads report per epoch and finish with) or one of the metrics it sends at finish (the
built-in workloads' `params_m`, `epoch_seconds`, ...; a plugin's own, `trial.set_metrics`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.spec.constraints import BUILTIN_METRICS, METRIC_NAME

VALUE = "val_loss"  # the objective that is the trial's own value
MAX_OBJECTIVES = 4


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=METRIC_NAME)
    direction: Literal["minimize", "maximize"] = "minimize"


def check_objectives(objectives: list[Objective], builtin: bool, model: str, direction: str) -> None:
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ValueError(f"objectives: names must be unique, got {names}")
    for i, o in enumerate(objectives):
        if builtin and o.name != VALUE and o.name not in BUILTIN_METRICS:
            raise ValueError(
                f"objectives.{i}.name: '{o.name}' is not something the {model} workload reports; "
                f"allowed: {VALUE}, {', '.join(BUILTIN_METRICS)}"
            )
        if o.name == VALUE and o.direction != direction:
            raise ValueError(f"objectives.{i}.direction: {VALUE} is the reported curve, which `direction` ({direction}) orders")


def objective_values(objectives: list[Objective], value: float | None, metrics: Mapping[str, float] | None) -> tuple[list[float] | None, str | None]:
    """The values Optuna stores for a complete trial, in the objectives' order, or why there are none."""
    values = []
    for o in objectives:
        v = value if o.name == VALUE else (metrics or {}).get(o.name)
        if v is None or not math.isfinite(v):
            return None, f"objective '{o.name}' was not reported (a finite {'value' if o.name == VALUE else 'metric'} is needed)"
        values.append(float(v))
    return values, None
