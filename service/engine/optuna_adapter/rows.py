"""Rows of Optuna's own tables, written and read on the caller's connection (inside its transaction).

The worker protocol's hot paths (claim, report, heartbeat, finish) write a handful of rows per
call: a heartbeat, an intermediate value, a user attribute. Through the storage each is a pool
checkout, a read of the trial, a read of the row and a commit of its own; here each is one
statement in the transaction that already holds the trial's lease. The rows are exactly the
ones Optuna's RDBStorage writes (same tables, same encodings), so Optuna, optuna-dashboard and
the flat path read them as their own; tests/test_coordination.py checks them through Optuna's
public API. The tables are private to Optuna, whose version is pinned in constraints.txt.

PostgreSQL only (ON CONFLICT), as the service is.

Lock order: these statements take a KEY SHARE lock on the trial's row (foreign keys). Optuna's
state change (storage.set_trial_state_values) locks the row FOR UPDATE on another connection, so
a transaction must not call it after writing here, or it waits on itself."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from optuna.storages._rdb import models as rdb_models
from optuna.trial import TrialState
from sqlalchemy import Double, Integer, bindparam, exists, func, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from service.db.models import CurveBest, Lease, StudyRecord

TRIALS = rdb_models.TrialModel.__table__
_STUDIES = rdb_models.StudyModel.__table__
VALUES = rdb_models.TrialIntermediateValueModel.__table__
_HEARTBEATS = rdb_models.TrialHeartbeatModel.__table__
_USER_ATTRS = rdb_models.TrialUserAttributeModel.__table__
_SYSTEM_ATTRS = rdb_models.TrialSystemAttributeModel.__table__
_VALUE_MODEL = rdb_models.TrialIntermediateValueModel


def record_heartbeat(conn: Any, trial_id: int) -> None:
    """What RDBStorage.record_heartbeat writes: the trial's one heartbeat row, set to the
    database's now() (Optuna's stale-trial check compares it with its own now())."""
    h = _HEARTBEATS.c
    statement = pg_insert(_HEARTBEATS).values(trial_id=trial_id, heartbeat=func.now())
    conn.execute(statement.on_conflict_do_update(index_elements=[h.trial_id], set_={"heartbeat": statement.excluded.heartbeat}))


def record_heartbeats(conn: Any, trial_ids: Iterable[int]) -> None:
    """record_heartbeat for several trials, in one statement."""
    ids = sorted(set(trial_ids))
    if not ids:
        return
    h = _HEARTBEATS.c
    statement = pg_insert(_HEARTBEATS).values([{"trial_id": trial_id, "heartbeat": func.now()} for trial_id in ids])
    conn.execute(statement.on_conflict_do_update(index_elements=[h.trial_id], set_={"heartbeat": statement.excluded.heartbeat}))


def set_user_attrs(conn: Any, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """What RDBStorage.set_trial_user_attr writes (JSON, a later value replacing an earlier one),
    for several keys in one statement."""
    _upsert_attrs(conn, _USER_ATTRS, trial_id, attrs)


def set_system_attrs(conn: Any, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """What RDBStorage.set_trial_system_attr writes, likewise (a constraint's value may be inf:
    Optuna's JSON reads `Infinity` back)."""
    _upsert_attrs(conn, _SYSTEM_ATTRS, trial_id, attrs)


def _upsert_attrs(conn: Any, table: Any, trial_id: int, attrs: Mapping[str, Any]) -> None:
    if not attrs:
        return
    a = table.c
    rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
    statement = pg_insert(table).values(rows)
    conn.execute(statement.on_conflict_do_update(index_elements=[a.trial_id, a.key], set_={"value_json": statement.excluded.value_json}))


def state_and_curve(conn: Any, trial_id: int) -> tuple[TrialState | None, dict[int, float]]:
    """The trial's state (None if there is no such trial) and intermediate values, in one read."""
    return _read(conn, trial_id)


def insert_value_and_read(conn: Any, trial_id: int, step: int, value: float) -> tuple[TrialState | None, dict[int, float]]:
    """Add the step's intermediate value if the trial is RUNNING and the step has none (Optuna's
    row: value and kind), and in the same statement read the trial's state and curve as they were
    before it: a statement does not see its own CTE's insert, so the caller adds the step."""
    trials, v = TRIALS.c, VALUES.c
    stored, kind = _VALUE_MODEL.intermediate_value_to_stored_repr(value)
    row = select(
        literal(trial_id, type_=v.trial_id.type),
        literal(step, type_=v.step.type),
        literal(stored, type_=v.intermediate_value.type),
        literal(kind, type_=v.intermediate_value_type.type),
    ).where(exists().where(trials.trial_id == trial_id, trials.state == TrialState.RUNNING))
    insert = (
        pg_insert(VALUES)
        .from_select([v.trial_id, v.step, v.intermediate_value, v.intermediate_value_type], row)
        .on_conflict_do_nothing(index_elements=[v.trial_id, v.step])
        .cte("inserted")
    )
    return _read(conn, trial_id, insert)


class StoredCurve(NamedTuple):
    """A trial's state and what a pruner reads of its curve, as they were before a batch's
    insert: whether the reported step had a value already, the two highest steps, and the
    best values (as np.nanmin / np.nanmax over the stored values: NaN when there are none)."""

    state: TrialState | None
    had_step: bool
    last_step: int | None
    previous_step: int
    best_min: float
    best_max: float


_FINITE = _VALUE_MODEL.TrialIntermediateValueType.FINITE
_INF_POS = _VALUE_MODEL.TrialIntermediateValueType.INF_POS
_INF_NEG = _VALUE_MODEL.TrialIntermediateValueType.INF_NEG


def _insert_and_summarize_statement() -> Any:
    trials, v = TRIALS.c, VALUES.c
    batch = func.unnest(
        bindparam("trial_ids", type_=ARRAY(Integer)), bindparam("steps", type_=ARRAY(Integer)), bindparam("values", type_=ARRAY(Double))
    ).table_valued("trial_id", "step", "value", name="batch").render_derived()
    b = batch.c
    running = exists().where(trials.trial_id == b.trial_id, trials.state == TrialState.RUNNING)
    rows = select(b.trial_id, b.step, b.value, literal(_FINITE, type_=v.intermediate_value_type.type)).where(running)
    insert = (
        pg_insert(VALUES)
        .from_select([v.trial_id, v.step, v.intermediate_value, v.intermediate_value_type], rows)
        .on_conflict_do_nothing(index_elements=[v.trial_id, v.step])
        .cte("inserted")
    )
    # The curve as it was (a statement does not see its own CTE's insert, and the triggers that
    # keep hpo_curve_bests run after it). Steps come from the (trial_id, step) index, a few
    # entries each; the best values from the trial's hpo_curve_bests row, so the cost of a
    # report does not grow with its trial's number of steps. A trial with values but no row
    # (its values were updated or deleted since: migration 0006) is aggregated here instead.
    had_step = exists().where(v.trial_id == b.trial_id, v.step == b.step)
    last = select(func.max(v.step).label("last_step")).where(v.trial_id == b.trial_id).lateral("last")
    previous = select(func.max(v.step)).where(v.trial_id == b.trial_id, v.step < last.c.last_step).scalar_subquery()
    kept = CurveBest.__table__.c
    aggregated = (
        select(
            func.min(v.intermediate_value).filter(v.intermediate_value_type == _FINITE).label("finite_min"),
            func.max(v.intermediate_value).filter(v.intermediate_value_type == _FINITE).label("finite_max"),
            func.bool_or(v.intermediate_value_type == _INF_POS).label("inf_pos"),
            func.bool_or(v.intermediate_value_type == _INF_NEG).label("inf_neg"),
        )
        .where(v.trial_id == b.trial_id, kept.trial_id.is_(None))
        .lateral("aggregated")
    )
    a = aggregated.c
    return (
        select(
            b.trial_id,
            trials.state,
            had_step,
            last.c.last_step,
            previous,
            func.coalesce(kept.finite_min, a.finite_min),
            func.coalesce(kept.finite_max, a.finite_max),
            func.coalesce(kept.inf_pos, a.inf_pos),
            func.coalesce(kept.inf_neg, a.inf_neg),
        )
        .select_from(
            batch.outerjoin(TRIALS, trials.trial_id == b.trial_id)
            .outerjoin(CurveBest.__table__, kept.trial_id == b.trial_id)
            .join(last, true())
            .join(aggregated, true())
        )
        .add_cte(insert)
    )


_INSERT_AND_SUMMARIZE = _insert_and_summarize_statement()


def insert_values_and_summarize(conn: Any, reports: Sequence[tuple[int, int, float]]) -> dict[int, StoredCurve]:
    """insert_value_and_read for many trials (one (trial_id, step, finite value) each) in one
    statement, reading back a summary of each curve instead of the curve itself. A trial id
    with no trial gets state None."""
    if not reports:
        return {}
    found: dict[int, StoredCurve] = {}
    params = {"trial_ids": [r[0] for r in reports], "steps": [r[1] for r in reports], "values": [float(r[2]) for r in reports]}
    for trial_id, state, had_step, last_step, previous, finite_min, finite_max, inf_pos, inf_neg in conn.execute(_INSERT_AND_SUMMARIZE, params):
        # np.nanmin / np.nanmax over the stored values, NaN rows left out.
        best_min = -math.inf if inf_neg else finite_min if finite_min is not None else math.inf if inf_pos else math.nan
        best_max = math.inf if inf_pos else finite_max if finite_max is not None else -math.inf if inf_neg else math.nan
        found[trial_id] = StoredCurve(state, bool(had_step), last_step, -1 if previous is None else previous, best_min, best_max)
    return found


def studies_with_unleased_running_trials(conn: Any) -> list[int]:
    """Our ids (hpo_studies.id) of the studies with a RUNNING trial that never had a lease: a
    claim that died between Optuna's commit of the new trial and its own (see
    reaper._fail_orphans). One read over Optuna's trials (RUNNING ones only) and our leases."""
    trials, studies = TRIALS.c, _STUDIES.c
    leased = exists().where(Lease.trial_id == trials.trial_id)
    query = (
        select(StudyRecord.id)
        .join(_STUDIES, studies.study_name == StudyRecord.optuna_name)
        .join(TRIALS, trials.study_id == studies.study_id)
        .where(trials.state == TrialState.RUNNING, ~leased)
        .distinct()
    )
    return list(conn.execute(query).scalars())


def trial_counts(conn: Any) -> list[tuple[int, TrialState, int]]:
    """(our study id, state, trials) for every study of ours with trials: one grouped read over
    Optuna's trials, however many studies there are."""
    trials, studies = TRIALS.c, _STUDIES.c
    query = (
        select(StudyRecord.id, trials.state, func.count())
        .join(_STUDIES, studies.study_name == StudyRecord.optuna_name)
        .join(TRIALS, trials.study_id == studies.study_id)
        .group_by(StudyRecord.id, trials.state)
    )
    return [(study_id, state, n) for study_id, state, n in conn.execute(query)]


def _read(conn: Any, trial_id: int, cte: Any = None) -> tuple[TrialState | None, dict[int, float]]:
    trials, v = TRIALS.c, VALUES.c
    query = (
        select(trials.state, v.step, v.intermediate_value, v.intermediate_value_type)
        .select_from(TRIALS.outerjoin(VALUES, v.trial_id == trials.trial_id))
        .where(trials.trial_id == trial_id)
    )
    if cte is not None:
        query = query.add_cte(cte)
    rows = conn.execute(query).all()
    state: TrialState | None = rows[0][0] if rows else None
    values = {
        step: _VALUE_MODEL.stored_repr_to_intermediate_value(stored, kind) for _, step, stored, kind in rows if step is not None
    }
    return state, values


def lease_epochs() -> Any:
    """The epochs a lease reported, as SQL to assign to Lease.epochs when it ends: its trial's
    intermediate values less those it inherited. Evaluated at flush, in the ending statement."""
    v = VALUES.c
    reported = select(func.count()).where(v.trial_id == Lease.trial_id).scalar_subquery()
    return reported - Lease.inherited


def running_epochs(conn: Any, study_id: int) -> int:
    """The epochs the study's running leases have reported so far (what the budget shows as used)."""
    v = VALUES.c
    running = (Lease.study_id == study_id, Lease.ended_at.is_(None))
    counted = select(func.count()).select_from(Lease).join(VALUES, v.trial_id == Lease.trial_id).where(*running)
    inherited = select(func.coalesce(func.sum(Lease.inherited), 0)).where(*running)
    return max(0, int(conn.execute(select(counted.scalar_subquery() - inherited.scalar_subquery())).scalar_one()))
