"""The sampler of a study definition: one model per Optuna sampler, with the options the service
passes on (service/engine/factories.py builds the sampler from them, once per claim).

The defaults are Optuna 5.0's, so a definition that names only a kind gets what
`optuna.samplers.<Kind>Sampler()` would give in a notebook."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

SAMPLER_KINDS = ("tpe", "random", "grid", "qmc", "cmaes", "gp", "nsga2", "nsga3", "bruteforce")
# Optuna's crossover operators for its genetic samplers (optuna.samplers.nsgaii).
CROSSOVERS = ("uniform", "blxalpha", "sbx", "vsbx", "undx", "spx")


class _Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int | None = None


class TpeSampler(_Sampler):
    kind: Literal["tpe"] = "tpe"
    n_startup_trials: int = Field(10, ge=0, le=10_000)
    n_ei_candidates: int = Field(24, ge=1, le=1_000)
    # Model the parameters jointly (multivariate TPE; None: Optuna 5's default, on for a single
    # objective, off for several), and split a conditional space into the groups of parameters
    # that occur together (`group`, which needs the multivariate model).
    multivariate: bool | None = None
    group: bool = False
    # Running trials count as if they had the worst value so far, so workers claiming at the
    # same time are steered apart instead of all sampling next to the current best (Optuna 5's
    # default, and what a pool of workers wants).
    constant_liar: bool = True

    @model_validator(mode="after")
    def _group_needs_multivariate(self) -> TpeSampler:
        if self.group and self.multivariate is False:
            raise ValueError("sampler.tpe.group: needs the multivariate model; drop multivariate: false")
        return self


class RandomSampler(_Sampler):
    kind: Literal["random"]


class GridSampler(_Sampler):
    kind: Literal["grid"]


class QmcSampler(_Sampler):
    kind: Literal["qmc"]


class CmaEsSampler(_Sampler):
    kind: Literal["cmaes"]


class GpSampler(_Sampler):
    """Optuna's GPSampler (Gaussian-process Bayesian optimisation). It fits in the API process at
    every claim and needs torch there (the API checks on create)."""

    kind: Literal["gp"]
    n_startup_trials: int = Field(10, ge=0, le=10_000)
    # The objective has no noise (same params, same value): the GP fits no noise term.
    deterministic_objective: bool = False


class _Genetic(_Sampler):
    """What NSGA-II and NSGA-III share: a population evolved generation by generation."""

    population_size: int = Field(50, ge=2, le=10_000)
    # None: Optuna's 1 / (number of parameters).
    mutation_prob: float | None = Field(None, ge=0.0, le=1.0)
    crossover: Literal[CROSSOVERS] = "uniform"  # type: ignore[valid-type]
    crossover_prob: float = Field(0.9, ge=0.0, le=1.0)
    swapping_prob: float = Field(0.5, ge=0.0, le=1.0)


class Nsga2Sampler(_Genetic):
    kind: Literal["nsga2"]


class Nsga3Sampler(_Genetic):
    kind: Literal["nsga3"]
    # Divisions per objective of the reference points (Das and Dennis); Optuna's default.
    dividing_parameter: int = Field(3, ge=1, le=100)


class BruteForceSampler(_Sampler):
    """Every combination of a discrete space, once; the study's n_trials becomes the space's size
    when that is smaller (StudySpec), so the study ends when the space is used up."""

    kind: Literal["bruteforce"]


def _kind(value: Any) -> str | None:
    """A definition without `sampler.kind` gets TPE, Optuna's default."""
    if isinstance(value, dict):
        kind = value.get("kind", "tpe")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


Sampler = Annotated[
    Union[
        Annotated[TpeSampler, Tag("tpe")],
        Annotated[RandomSampler, Tag("random")],
        Annotated[GridSampler, Tag("grid")],
        Annotated[QmcSampler, Tag("qmc")],
        Annotated[CmaEsSampler, Tag("cmaes")],
        Annotated[GpSampler, Tag("gp")],
        Annotated[Nsga2Sampler, Tag("nsga2")],
        Annotated[Nsga3Sampler, Tag("nsga3")],
        Annotated[BruteForceSampler, Tag("bruteforce")],
    ],
    Discriminator(
        _kind,
        custom_error_type="sampler_kind",
        custom_error_message=f"sampler.kind: must be one of {', '.join(SAMPLER_KINDS)}",
    ),
]
