"""What the service answers, as pydantic models mirroring its response schemas.

Every model keeps fields it does not know (``extra="allow"``): a newer server's additions (e.g.
``lr_sweep`` on a study) pass through and are reachable as attributes and in ``model_extra``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Optuna's trial states, as the service names them.
RUNNING, COMPLETE, PRUNED, FAIL, WAITING = "RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING"
FINISHED_STATES = (COMPLETE, PRUNED, FAIL)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class BestTrial(_Model):
    number: int
    value: float
    params: dict[str, Any] = Field(default_factory=dict)


class Diagnosis(_Model):
    counts: dict[str, int] = Field(default_factory=dict, description="finished trials by diagnosis")
    hints: list[str] = Field(default_factory=list, description="plain advice drawn from the diagnoses")


class Study(_Model):
    name: str
    optuna_name: str = Field(description="the name in Optuna's storage and optuna-dashboard: <team>/<study>")
    state: str = Field(description="running, stopped or finished")
    direction: str = "minimize"
    n_trials: int
    counts: dict[str, int] = Field(default_factory=dict, description="trials by Optuna state")
    best_trial: BestTrial | None = None
    created_at: datetime | None = None
    definition: dict[str, Any] = Field(default_factory=dict)
    diagnosis: Diagnosis = Field(default_factory=Diagnosis)
    budget: dict[str, Any] | None = Field(None, description="each budget's limit, used and left; `binding` and `exhausted`")
    best_trials: list[dict[str, Any]] | None = Field(None, description="several objectives: the Pareto front (number, values, params)")
    directions: list[str] | None = None

    def count(self, state: str) -> int:
        return self.counts.get(state, 0)

    @property
    def finished(self) -> int:
        """Trials that ended (complete, pruned or failed), retried failures included."""
        return sum(self.count(s) for s in FINISHED_STATES)

    @property
    def running(self) -> bool:
        return self.state == "running"


class StudyCreated(Study):
    warnings: list[str] = Field(default_factory=list, description="choices that are usually wrong; the study was created anyway")


class StudyCloned(StudyCreated):
    carried: int = Field(0, description="finished trials copied from the study cloned (with carry_trials)")
    left_out: int = Field(0, description="finished trials not copied: their params leave the new space")


class StudyImported(Study):
    carried: int = Field(description="finished trials copied in")
    left_out: int = Field(description="finished trials not copied: their params leave the study's space")


class Trial(_Model):
    trial_id: int
    number: int
    state: str
    value: float | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    intermediate_values: dict[int, float | None] = Field(default_factory=dict, description="step (epoch) -> validation loss")
    worker_id: str | None = None
    error: str | None = None
    reason: str | None = None
    diagnosis: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    distributions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    retry_of: int | None = None
    attempt: int = 1
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None

    @property
    def last_step(self) -> int | None:
        return max(self.intermediate_values) if self.intermediate_values else None

    @property
    def last_value(self) -> float | None:
        """The latest reported validation loss (the highest step), or None before the first report."""
        step = self.last_step
        return None if step is None else self.intermediate_values[step]


class Preset(_Model):
    name: str
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    finetune_space: dict[str, dict[str, Any]] = Field(default_factory=dict)


# -- tokens and audit (admin tokens only) ----------------------------------------------------


class Token(_Model):
    """One of the team's tokens as the service shows it: never the token itself nor its hash."""

    prefix: str = Field(description="the token's visible start, hpo_<8 hex>: how it is named everywhere")
    role: str = Field(description="admin, member, worker or viewer")
    name: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = Field(None, description="updated at most about once a minute")
    revoked_at: datetime | None = None
    active: bool = Field(True, description="neither revoked nor expired")


class TokenCreated(Token):
    token: str = Field(repr=False, description="the token itself; shown only in this answer, only its SHA-256 is stored")
    team: str


class TokenList(_Model):
    """The team's tokens, revoked and expired ones included, and the team's name."""

    team: str
    tokens: list[Token] = Field(default_factory=list)

    def get(self, prefix: str) -> Token | None:
        """The token with this prefix, or None."""
        return next((t for t in self.tokens if t.prefix == prefix), None)

    @property
    def active(self) -> list[Token]:
        return [t for t in self.tokens if t.active]


class AuditEvent(_Model):
    id: int
    at: datetime
    actor: str | None = Field(None, description="the acting token's prefix; None for `hpo token create` on the server host")
    role: str | None = Field(None, description="the acting token's role")
    action: str = Field(description="study.create, study.stop, study.delete, token.create, token.revoke, dashboard.login, ...")
    target: str = Field(description="the study's name or the token's prefix")
    detail: dict[str, Any] = Field(default_factory=dict)
