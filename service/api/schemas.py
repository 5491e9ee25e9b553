"""Request and response bodies, split by role. The study definition itself is service.spec."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from service.db.models import ROLES
from service.spec import NAME_PATTERN, NAME_RULE, Assignment, FinishState
from service.spec.fusion import MAX_GROUP
from service.spec.limits import bad_text, clean_text

Role = Literal[ROLES]  # type: ignore[valid-type]
# Optuna's step column (trial_intermediate_values.step) is a 4-byte integer.
MAX_STEP = 2**31 - 1


def _refuse_bad_text(value: str) -> str:
    why = bad_text(value)
    if why is not None:
        raise ValueError(f"text {why}")
    return value


def _clean(value: Any) -> Any:
    return clean_text(value) if isinstance(value, str) else value


# A string the service stores or compares in SQL: PostgreSQL refuses NUL (and jsonb lone
# surrogates), which used to surface as a 500 DataError (the review's finding 5).
Text = Annotated[str, AfterValidator(_refuse_bad_text)]
# Text a worker relays from a trial (a crashing library's stderr): stored with what PostgreSQL
# refuses replaced by U+FFFD, never refused, so that a finish cannot fail on it.
RelayedText = Annotated[str, BeforeValidator(_clean)]


class BestTrial(BaseModel):
    number: int
    value: float
    params: dict[str, Any]


class FrontTrial(BaseModel):
    number: int
    values: list[float] = Field(description="in the objectives' order")
    params: dict[str, Any]


class Diagnosis(BaseModel):
    counts: dict[str, int] = Field(description="finished trials by diagnosis: diverged, oscillating, too_slow, healthy")
    hints: list[str] = Field(description="plain advice drawn from the diagnoses")


class Broken(BaseModel):
    reason: str = Field(description="what failed, e.g. the stored definition no longer validates, or its Optuna study is gone")
    since: datetime | None = Field(description="when a claim last failed on it (null: found while reading it)")


class StudyPublic(BaseModel):
    name: str
    optuna_name: str = Field(description="The name in Optuna's storage and optuna-dashboard: <team>/<study>")
    state: str = Field(description="running, stopped, finished, or broken (see `broken`)")
    direction: str
    n_trials: int
    budget: dict[str, Any] | None = Field(
        None,
        description="each budget's limit, used and left (n_trials; max_epochs with in_flight; max_seconds; until with "
        "left_seconds), `binding` (the one with the least left) and `exhausted` (the one that ran out, if any)",
    )
    counts: dict[str, int] = Field(description="trials by Optuna state")
    best_trial: BestTrial | None
    best_trials: list[FrontTrial] | None = Field(None, description="a multi-objective study's Pareto front")
    directions: list[str] | None = Field(None, description="one per objective")
    created_at: datetime
    definition: dict[str, Any]
    diagnosis: Diagnosis
    kind: str = Field(description="search, lr_sweep or lr_finder")
    lr_sweep: dict[str, Any] | None = Field(
        None,
        description="an lr_sweep's U-curve: points (lr, mean, values, diverged), best_lr, range (the lrs within "
        "tolerance of the best), divergence_lr, interior (the best is not at an end of the grid)",
    )
    lr_finder: dict[str, Any] | None = Field(
        None, description="an LR range test's curve (lrs, smoothed losses) and its suggestion (low, high, ...)"
    )
    lr_range: dict[str, Any] | None = Field(
        None,
        description="auto_lr_range: status (pending, narrowed, failed), original and narrowed lr range, the range test's study",
    )
    broken: Broken | None = Field(
        None,
        description="set when the study cannot be served: claims skip it for a minute at a time and the other studies "
        "go on; delete it, or fix what the reason names",
    )


class StudyCreated(StudyPublic):
    warnings: list[str] = Field(description="choices in the space that are usually wrong; the study is created anyway")


class StudiesPublic(BaseModel):
    studies: list[StudyPublic]


class TrialPublic(BaseModel):
    trial_id: int
    number: int
    state: str
    value: float | None
    values: list[float | None] | None = Field(None, description="every objective's value (one for a single-objective study)")
    params: dict[str, Any]
    intermediate_values: dict[int, float | None]
    worker_id: str | None
    error: str | None
    reason: str | None = Field(description="why it ended: diverged, oom, timeout, exception, ...")
    diagnosis: str | None = Field(description="what its loss curve says: diverged, oscillating, too_slow, healthy")
    metrics: dict[str, float]
    distributions: dict[str, dict[str, Any]] = Field(description="the distribution each param was sampled from")
    retry_of: int | None = Field(description="the number of the trial this one retries (its worker was lost)")
    carried_from: str | None = Field(None, description="<optuna study>#<number> of the trial this one copies (clone, import)")
    constraints: dict[str, float | None] = Field(
        default_factory=dict, description="<metric>:<max|min> -> how far past the bound (<= 0: kept; null: the metric was not sent)"
    )
    feasible: bool | None = Field(None, description="keeps every constraint of the study (null: the study has none)")
    attempt: int = Field(description="1 for an original trial, 2 for its first retry, ...")
    datetime_start: datetime | None
    datetime_complete: datetime | None


class TrialsPublic(BaseModel):
    trials: list[TrialPublic]


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnqueuedTrial(_Forbid):
    params: dict[str, Any] = Field(description="values for some or all of the searched parameters; the rest are sampled")


class EnqueueRequest(_Forbid):
    trials: list[EnqueuedTrial] = Field(min_length=1, max_length=1000)


class EnqueueResponse(BaseModel):
    numbers: list[int] = Field(description="the queued trials' numbers, in the order given; claimed before sampled ones")


class BudgetPatch(_Forbid):
    """The bounds of service.spec.study.Budget."""

    n_trials: int | None = Field(None, ge=1, le=1_000_000)
    max_concurrent: int | None = Field(None, ge=1, le=10_000)
    max_retries: int | None = Field(None, ge=0, le=100)
    max_epochs: int | None = Field(None, ge=1, le=1_000_000_000)
    max_seconds: float | None = Field(None, gt=0, le=1e10)
    until: datetime | None = None


class StudyPatch(BaseModel):
    # Other keys are kept to be refused with a reason (service.engine.lifecycle.refuse_fixed_fields):
    # "space: cannot change on an existing study ... clone it" says more than "extra input".
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    budget: BudgetPatch | None = None
    stopped: bool | None = Field(None, description="true stops claims (as POST .../stop); false resumes a stopped study")


class CloneRequest(_Forbid):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_RULE)
    changes: dict[str, Any] = Field(
        default_factory=dict,
        description="parts of the definition to change (merged: null removes a key; a space entry is replaced whole)",
    )
    carry_trials: bool = Field(False, description="copy this study's finished trials that fit the new space")


class StudyCloned(StudyCreated):
    carried: int = Field(description="trials copied from the study cloned")
    left_out: int = Field(description="finished trials not copied: their params leave the new space")


class StudyImported(StudyPublic):
    carried: int = Field(description="finished trials copied in")
    left_out: int = Field(description="finished trials not copied: their params leave the study's space")


class DatabaseImport(_Forbid):
    optuna_study: Text = Field(min_length=1, max_length=512, description="an Optuna study on the service's database, by its Optuna name")


class ClaimRequest(BaseModel):
    worker_id: Text = Field(min_length=1, max_length=200)
    studies: list[Text] | None = Field(None, max_length=1000, description="claim only from these studies of the team")


class LeaseRequest(BaseModel):
    lease_id: Text = Field(min_length=1, max_length=36)


class GroupMember(LeaseRequest):
    trial_id: int = Field(ge=0, le=2**63 - 1)


class ClaimGroupRequest(ClaimRequest):
    max_trials: int = Field(ge=1, le=MAX_GROUP, description="the most trials to claim at once (a worker's --fuse K)")
    like: GroupMember | None = Field(
        None,
        description="a running trial of this worker's group (its id and lease): claim only trials that fuse with it, "
        "from its study (a refill after members were pruned); `studies` is then ignored",
    )


class GroupAssignment(BaseModel):
    assignments: list[Assignment]
    alone: str | None = Field(None, description="why this one trial trains alone rather than fused; null for a group")


class ReportRequest(LeaseRequest):
    step: int = Field(ge=0, le=MAX_STEP)
    value: float = Field(allow_inf_nan=False, description="finite; a worker handles a NaN loss itself (divergence)")


class ReportResponse(BaseModel):
    prune: bool


class FinishRequest(LeaseRequest):
    state: FinishState
    value: float | None = Field(None, allow_inf_nan=False)
    error: RelayedText | None = Field(None, max_length=10_000)
    reason: str | None = Field(
        None,
        pattern=r"^[a-z_]{1,40}$",
        description="why the trial ended, as a short code: diverged, oom, timeout, not_allowed, exception, ...",
    )
    metrics: dict[RelayedText, float] | None = Field(None, max_length=50, description="e.g. val_accuracy; stored on the trial")

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (v or {}).items():
            if len(name) > 64 or not math.isfinite(value):
                raise ValueError(f"metrics.{name[:64]}: names up to 64 characters with finite values")
        return v


class FinishResponse(BaseModel):
    state: FinishState


class HeartbeatResponse(BaseModel):
    lease_seconds: float


class QueuedStudy(BaseModel):
    name: str
    depth: int = Field(description="trials of this study a worker could claim now")
    remaining: int = Field(description="trials of the budget not started yet")
    waiting: int = Field(description="retries queued in Optuna")
    running: int
    max_concurrent: int


class QueuePublic(BaseModel):
    team: str
    depth: int = Field(description="trials of the team a worker could claim now: the sum over its studies")
    running: int = Field(description="trials of these studies running now (under a lease)")
    demand: int = Field(description="depth + running: the worker slots the team's work fills now, for scaling a worker pool")
    studies: list[QueuedStudy] = Field(description="the team's studies that are not stopped")


class PresetPublic(BaseModel):
    name: str
    fixed: dict[str, Any] = Field(description="workload values the preset fixes (the optimizer)")
    space: dict[str, dict[str, Any]] = Field(description="space entries the preset adds")
    finetune_space: dict[str, dict[str, Any]] = Field(description="the same with finetune: true (lr 10-100x lower)")


class PresetsPublic(BaseModel):
    presets: list[PresetPublic]


class TokenCreate(BaseModel):
    """A new token for the caller's team. Unknown fields are refused: a misspelt expiry must not
    quietly make a token that never expires."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="admin, member, worker or viewer (see the README's Security section)")
    name: Text | None = Field(None, min_length=1, max_length=200, description="what the token is for, e.g. 'gpu-box-3 workers'")
    expires_in_days: int | None = Field(None, ge=1, le=3650, description="the token stops working after this many days")
    expires_at: datetime | None = Field(None, description="or: when it stops working (ISO 8601; UTC when no offset is given)")

    @field_validator("expires_at")
    @classmethod
    def _future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        if v <= datetime.now(timezone.utc):
            raise ValueError("must be in the future")
        return v

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenCreate:
        if self.expires_in_days is not None and self.expires_at is not None:
            raise ValueError("expires_in_days, expires_at: give one of them, not both")
        return self


class TokenPublic(BaseModel):
    prefix: str = Field(description="the token's visible start, hpo_<8 hex>: how it is named everywhere")
    role: Role
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="updated at most about once a minute")
    revoked_at: datetime | None
    active: bool = Field(description="neither revoked nor expired")


class TokenCreated(TokenPublic):
    token: str = Field(description="the token itself; shown only in this answer, only its SHA-256 is stored")
    team: str


class TokensPublic(BaseModel):
    team: str
    tokens: list[TokenPublic]


class AuditEventPublic(BaseModel):
    id: int
    at: datetime = Field(description="when it happened; for dashboard.login, the first login of its window")
    actor: str | None = Field(description="the acting token's prefix; null for `hpo token create` on the server host")
    role: str | None = Field(description="the acting token's role")
    action: str = Field(
        description="study.create, study.stop, study.delete (detail.via is 'dashboard' for a delete in the dashboard), "
        "token.create, token.revoke; dashboard.login (one event per token per hour: detail.count logins since `at`, "
        "the latest at detail.last_at); and the dashboard's writes: dashboard.tell, dashboard.user_attrs, "
        "dashboard.study_note, dashboard.trial_note, dashboard.preference, dashboard.preference_remove, "
        "dashboard.preference_restore, dashboard.feedback_component, dashboard.skip"
    )
    target: str = Field(description="the study's name or the token's prefix")
    detail: dict[str, Any]


class AuditPublic(BaseModel):
    events: list[AuditEventPublic]
    next_before_id: int | None = Field(
        description="pass as `before_id` to get the next, older page; null when there are no older events"
    )
