"""The hpo_* tables. Optuna's own tables are Optuna's business; alembic here ignores them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names keep `alembic check` quiet and migrations portable.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

# What a token may do (README, "Security"). admin: everything, including the team's tokens and
# audit trail; member: create, stop, delete and read studies; worker: the worker protocol only;
# viewer: read studies and presets.
ROLES = ("admin", "member", "worker", "viewer")


# Our alembic history's own version table; Optuna's alembic keeps `alembic_version`.
ALEMBIC_VERSION_TABLE = "hpo_alembic_version"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Team(Base):
    __tablename__ = "hpo_teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = _now()


class Token(Base):
    __tablename__ = "hpo_tokens"
    __table_args__ = (CheckConstraint("role IN ('admin', 'member', 'worker', 'viewer')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("hpo_teams.id", ondelete="CASCADE"), index=True)
    # Only a SHA-256 of the token is stored; the visible prefix (hpo_<8 hex>) names the token in
    # listings, revocations and the audit trail, so it is unique.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Updated at most about once a minute per token, not on every request.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    team: Mapped[Team] = relationship(lazy="joined")


class AuditEvent(Base):
    """Who did what to a team's studies and tokens. Written in the same transaction as the action."""

    __tablename__ = "hpo_audit"
    __table_args__ = (Index("ix_hpo_audit_team_id_id", "team_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = _now()
    team_id: Mapped[int] = mapped_column(ForeignKey("hpo_teams.id", ondelete="CASCADE"))
    # The acting token's prefix and role; NULL for `hpo token create` on the server host.
    actor: Mapped[str | None] = mapped_column(String(16), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    action: Mapped[str] = mapped_column(String(32))  # one of service/db/audit.py's ACTIONS
    target: Mapped[str] = mapped_column(String(200))  # a study name or a token prefix
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB)


class StudyRecord(Base):
    """Our row for each study: its team, the full definition, and whether it was stopped.
    Optuna keeps neither sampler nor pruner settings, so the spec here is the source for both."""

    __tablename__ = "hpo_studies"
    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_hpo_studies_team_id_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("hpo_teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    optuna_name: Mapped[str] = mapped_column(String(127), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    stopped: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = _now()
    # Why the last claim on this study failed (its definition no longer builds, its Optuna study
    # is gone, ...), and when: claims skip it for a while and the API shows it. Cleared by the
    # next claim that succeeds (service/engine/broken.py).
    broken_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    broken_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    team: Mapped[Team] = relationship(lazy="joined")


class Lease(Base):
    """The current lease of a claimed trial. `lease_id` changes on every (re)claim, which is what
    fences a zombie worker out: its calls carry an old lease_id and get 409."""

    __tablename__ = "hpo_leases"
    # The open leases of a study (claims count them, the reaper walks them) without reading the
    # ended ones, which grow with the study.
    __table_args__ = (Index("ix_hpo_leases_open", "study_id", postgresql_where=text("ended_at IS NULL")),)

    trial_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # Optuna's trial_id
    # NULL once the study is deleted: the lease stays as a tombstone, so a worker still training
    # one of its trials gets 410 Gone (not a puzzling 404) and moves on.
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("hpo_studies.id", ondelete="SET NULL"), index=True, nullable=True
    )
    # The team that claimed it: a deleted study's tombstone answers 410 to that team only, and
    # 404 to every other team, like any trial that is not theirs.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("hpo_teams.id", ondelete="CASCADE"), nullable=True)
    number: Mapped[int] = mapped_column(Integer)
    # Lineage: 1 for an original trial; a retry records the number of the trial it retries.
    attempt: Mapped[int] = mapped_column(Integer, server_default="1", default=1)
    retry_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_id: Mapped[str] = mapped_column(String(36), unique=True)
    worker_id: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # NULL while the trial runs; set when it is finished or its lease expires.
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = _now()
    # Compute budgets (service/engine/budgets.py): the intermediate values a retry started with
    # (its lost predecessor's), and, once ended, the epochs this lease itself reported.
    inherited: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    epochs: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Checkpoint(Base):
    """The latest checkpoint of a trial, kept in the artifact store (optuna.artifacts)."""

    __tablename__ = "hpo_checkpoints"

    trial_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # Optuna's trial_id
    # NULL once the study is deleted; the reaper then removes the artifact.
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("hpo_studies.id", ondelete="SET NULL"), index=True, nullable=True
    )
    artifact_id: Mapped[str] = mapped_column(String(200))
    step: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = _now()


class DashboardSession(Base):
    """A login to the built-in optuna-dashboard (/dashboard). The cookie holds a random id; only
    its SHA-256 is stored, with the token it was opened with: revoking or expiring that token
    ends the session too."""

    __tablename__ = "hpo_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("hpo_tokens.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CurveBest(Base):
    """The best reported values of a trial's curve (np.nanmin / np.nanmax over Optuna's
    trial_intermediate_values), which every pruning decision reads. Kept by triggers on that
    table (migration 0006), so every path that writes a value keeps it, Optuna's own included,
    and a report reads one row instead of every step of its trial. Optuna's table stays the
    source of truth: a trial with values but no row here (after an update or delete of its
    values) is aggregated from there."""

    __tablename__ = "hpo_curve_bests"

    trial_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # Optuna's trial_id
    # Over the FINITE values only; NULL while there are none. Infinities are flags: NaN rows
    # are left out, as np.nanmin leaves them out.
    finite_min: Mapped[float | None] = mapped_column(Double, nullable=True)
    finite_max: Mapped[float | None] = mapped_column(Double, nullable=True)
    inf_pos: Mapped[bool] = mapped_column(Boolean)
    inf_neg: Mapped[bool] = mapped_column(Boolean)
