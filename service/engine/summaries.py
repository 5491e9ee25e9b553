"""What the engine answers about a study and its trials, as typed objects: the API turns them
into its response bodies (service/api/schemas.py), the study page into HTML. The budget and the
lr analyses stay JSON-shaped mappings: their shape depends on the study's kind and budgets, and
the API passes them on as they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class BestTrial:
    number: int
    value: float
    params: dict[str, Any]


@dataclass(frozen=True)
class FrontTrial:
    """One trial of a multi-objective study's Pareto front."""

    number: int
    values: list[float]
    params: dict[str, Any]


@dataclass(frozen=True)
class Diagnosis:
    counts: dict[str, int]
    hints: list[str]


@dataclass(frozen=True)
class Broken:
    """Why claims skip a study (service/engine/team_claims.py)."""

    reason: str
    since: datetime | None


@dataclass(frozen=True)
class StudySummary:
    name: str
    optuna_name: str
    state: str
    direction: str
    n_trials: int
    counts: dict[str, int]
    best_trial: BestTrial | None
    created_at: datetime
    definition: dict[str, Any]
    diagnosis: Diagnosis
    kind: str
    budget: dict[str, Any] | None = None
    best_trials: list[FrontTrial] | None = None
    directions: list[str] | None = None
    lr_sweep: dict[str, Any] | None = None
    lr_finder: dict[str, Any] | None = None
    lr_range: dict[str, Any] | None = None
    broken: Broken | None = None


@dataclass(frozen=True)
class TrialSummary:
    trial_id: int
    number: int
    state: str
    value: float | None
    values: list[float | None] | None
    params: dict[str, Any]
    intermediate_values: dict[int, float | None]
    worker_id: str | None
    error: str | None
    reason: str | None
    diagnosis: str | None
    metrics: dict[str, float]
    distributions: dict[str, dict[str, Any]]
    retry_of: int | None
    carried_from: str | None
    feasible: bool | None
    attempt: int
    datetime_start: datetime | None
    datetime_complete: datetime | None
    constraints: dict[str, float | None] = field(default_factory=dict)
