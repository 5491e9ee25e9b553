"""Constraints on what a trial reports besides its objective: `{metric: params_m, max: 5.0}`.

A trial is feasible when every bound holds. The service turns each bound into one of Optuna's
constraint values (`constraints:<metric>:<max|min>` on the trial, as Trial.set_constraint stores
them; <= 0 is feasible), which Optuna's TPE, NSGA-II/III and GP samplers steer by, and which
`best_trial` honours: an infeasible trial is never the best."""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What the built-in workloads send at finish (worker/workloads/builtin.py).
BUILTIN_METRICS = ("val_accuracy", "train_loss", "epochs", "initial_val_loss", "params_m", "epoch_seconds", "peak_memory_mb")
METRIC_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_CONSTRAINTS = 20


class Constraint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(pattern=METRIC_NAME)
    max: float | None = Field(None, allow_inf_nan=False)
    min: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _a_bound(self) -> Constraint:
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both")
        if self.max is not None and self.min is not None and not self.min < self.max:
            raise ValueError(f"min must be below max ({self.max}), got {self.min}")
        return self

    def violations(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Optuna's constraint values for these metrics: how far past each bound (<= 0: within).
        A metric the trial did not send counts as infinitely far: nothing shows it feasible."""
        value = metrics.get(self.metric)
        known = value is not None and math.isfinite(value)
        out = {}
        if self.max is not None:
            out[f"{self.metric}:max"] = value - self.max if known else math.inf  # type: ignore[operator]
        if self.min is not None:
            out[f"{self.metric}:min"] = self.min - value if known else math.inf  # type: ignore[operator]
        return out


def check_constraints(constraints: list[Constraint], builtin: bool, model: str) -> None:
    if len(constraints) > MAX_CONSTRAINTS:
        raise ValueError(f"constraints: {len(constraints)} given; at most {MAX_CONSTRAINTS}")
    for i, c in enumerate(constraints):
        if builtin and c.metric not in BUILTIN_METRICS:
            raise ValueError(f"constraints.{i}.metric: '{c.metric}' is not a metric the {model} workload reports; allowed: {', '.join(BUILTIN_METRICS)}")
