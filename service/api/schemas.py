"""Request and response bodies, split by role. The study definition itself is service.spec."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.spec import FinishState


class BestTrial(BaseModel):
    number: int
    value: float
    params: dict[str, Any]


class StudyPublic(BaseModel):
    name: str
    optuna_name: str = Field(description="The name in Optuna's storage and optuna-dashboard: <team>/<study>")
    state: str = Field(description="running, stopped or finished")
    direction: str
    n_trials: int
    counts: dict[str, int] = Field(description="trials by Optuna state")
    best_trial: BestTrial | None
    created_at: datetime
    definition: dict[str, Any]


class StudiesPublic(BaseModel):
    studies: list[StudyPublic]


class TrialPublic(BaseModel):
    trial_id: int
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    intermediate_values: dict[int, float | None]
    worker_id: str | None
    error: str | None
    datetime_start: datetime | None
    datetime_complete: datetime | None


class TrialsPublic(BaseModel):
    trials: list[TrialPublic]


class ClaimRequest(BaseModel):
    worker_id: str = Field(min_length=1, max_length=200)
    studies: list[str] | None = Field(None, description="claim only from these studies of the team")


class LeaseRequest(BaseModel):
    lease_id: str = Field(min_length=1, max_length=36)


class ReportRequest(LeaseRequest):
    step: int = Field(ge=0)
    value: float


class ReportResponse(BaseModel):
    prune: bool


class FinishRequest(LeaseRequest):
    state: FinishState
    value: float | None = None
    error: str | None = Field(None, max_length=10_000)


class FinishResponse(BaseModel):
    state: FinishState


class HeartbeatResponse(BaseModel):
    lease_seconds: float
