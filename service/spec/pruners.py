"""The pruner of a study definition: one model per Optuna pruner, defaults as Optuna 5.0's.

Median and percentile are judged by the service's own rule (service/engine/pruning.py,
tested decision for decision against Optuna's); every other kind is Optuna's pruner itself,
run on the study at each report."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from service.spec.strict import Strict

PRUNER_KINDS = ("median", "percentile", "successive_halving", "hyperband", "threshold", "patience", "none")


class _StepPruner(Strict):
    """What Optuna's MedianPruner and PercentilePruner share: when a trial may be judged."""

    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: int = Field(1, ge=1)
    n_min_trials: int = Field(1, ge=1)


class MedianPruner(_StepPruner):
    kind: Literal["median"]


class PercentilePruner(_StepPruner):
    """Optuna's PercentilePruner: a trial whose best value so far is worse than this percentile of
    the completed trials' values at the same step is pruned (median is 50). Lower prunes more:
    25 keeps only trials in the best quarter (docs/benchmarks.md, section c, measures the trade)."""

    kind: Literal["percentile"]
    percentile: float = Field(ge=0, le=100)


class SuccessiveHalvingPruner(Strict):
    """Asynchronous successive halving (ASHA): at rung k (step min_resource * reduction_factor^k)
    a trial goes on only if it is in the top 1/reduction_factor of the trials that reached it."""

    kind: Literal["successive_halving"]
    # "auto": Optuna's estimate from the first completed trial (its last step / 100, at least 1).
    min_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(4, ge=2, le=100)
    min_early_stopping_rate: int = Field(0, ge=0, le=100)
    bootstrap_count: int = Field(0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _bootstrap_needs_a_min_resource(self) -> SuccessiveHalvingPruner:
        if self.bootstrap_count > 0 and self.min_resource == "auto":
            raise ValueError("pruner.successive_halving.bootstrap_count: needs an integer min_resource (Optuna refuses it with 'auto')")
        return self


class HyperbandPruner(Strict):
    """Hyperband: several successive-halving brackets, each trial in one (by its number), each
    bracket trading how early it prunes against how many trials it keeps."""

    kind: Literal["hyperband"]
    min_resource: int = Field(1, ge=1)
    # "auto": the largest step of the first completed trial, plus one (for the built-in
    # workloads, which report epochs 1..epochs, that is epochs + 1). Give `epochs` to fix it.
    max_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(3, ge=2, le=100)
    bootstrap_count: int = Field(0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _resources_fit(self) -> HyperbandPruner:
        if self.bootstrap_count > 0 and self.max_resource == "auto":
            raise ValueError("pruner.hyperband.bootstrap_count: needs an integer max_resource (Optuna refuses it with 'auto')")
        if isinstance(self.max_resource, int) and self.max_resource < self.min_resource:
            raise ValueError(f"pruner.hyperband.max_resource: must be at least min_resource ({self.min_resource})")
        return self


class ThresholdPruner(Strict):
    """Prunes a trial whose latest value is below `lower`, above `upper`, or NaN."""

    kind: Literal["threshold"]
    lower: float | None = Field(None, allow_inf_nan=False)
    upper: float | None = Field(None, allow_inf_nan=False)
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _a_bound(self) -> ThresholdPruner:
        if self.lower is None and self.upper is None:
            raise ValueError("pruner.threshold: give lower, upper or both")
        if self.lower is not None and self.upper is not None and not self.lower < self.upper:
            raise ValueError(f"pruner.threshold.lower: must be below upper ({self.upper}), got {self.lower}")
        return self


class NoPruner(Strict):
    kind: Literal["none"]


# What a patience pruner may wrap: any pruner but another patience one.
Wrappable = Annotated[
    Union[MedianPruner, PercentilePruner, SuccessiveHalvingPruner, HyperbandPruner, ThresholdPruner],
    Field(discriminator="kind"),
]


class PatientPruner(Strict):
    """Optuna's PatientPruner: a trial is judged only once the best of its last `patience` + 1
    values is worse than its best before them by more than `min_delta` (it stopped improving);
    then by `wrapped`, or pruned outright without one."""

    kind: Literal["patience"]
    patience: int = Field(ge=0, le=10_000)
    min_delta: float = Field(0.0, ge=0.0)
    wrapped: Wrappable | None = None


Pruner = Annotated[
    Union[MedianPruner, PercentilePruner, SuccessiveHalvingPruner, HyperbandPruner, ThresholdPruner, PatientPruner, NoPruner],
    Field(discriminator="kind"),
]
