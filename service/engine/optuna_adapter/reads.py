"""Small reads of Optuna's own tables that its storage has no call for: the flat path's
incremental refresh of a study's trials (service/engine/coordination.py) and one team's studies
for the built-in dashboard (service/engine/team_storage.py). tests/test_coordination.py and
tests/test_dashboard.py check what they return against Optuna's public API."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from optuna.storages._rdb import models as rdb_models
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import TrialState
from sqlalchemy import Engine, Integer, any_, bindparam, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

_TRIALS = rdb_models.TrialModel.__table__
_SYSTEM_ATTRS = rdb_models.TrialSystemAttributeModel.__table__
_VALUES = rdb_models.TrialIntermediateValueModel.__table__


def _ids(trial_ids: list[int]) -> Any:
    # = ANY(array): one cached statement whatever the number of ids (IN renders each).
    return bindparam("trial_ids", trial_ids, type_=ARRAY(Integer))


def trial_states(conn: Any, study_id: int, after: int, also: list[int]) -> list[tuple[int, TrialState]]:
    """(id, state) of the study's trials with an id above `after`, and of those in `also`."""
    trials = _TRIALS.c
    wanted = trials.trial_id > after
    if also:
        wanted = or_(wanted, trials.trial_id == any_(_ids(also)))
    return [(trial_id, state) for trial_id, state in conn.execute(select(trials.trial_id, trials.state).where(trials.study_id == study_id, wanted))]


def with_system_attr(conn: Any, trial_ids: list[int], keys: Iterable[str]) -> set[int]:
    """Which of these trials have a system attribute with one of these keys."""
    if not trial_ids:
        return set()
    a = _SYSTEM_ATTRS.c
    return set(conn.scalars(select(a.trial_id).where(a.trial_id == any_(_ids(trial_ids)), a.key.in_(tuple(keys)))))


def curves(conn: Any, trial_ids: list[int]) -> dict[int, dict[int, float]]:
    """The intermediate values of these trials, as Optuna's FrozenTrial.intermediate_values has them."""
    found: dict[int, dict[int, float]] = {trial_id: {} for trial_id in trial_ids}
    if trial_ids:
        v = _VALUES.c
        query = select(v.trial_id, v.step, v.intermediate_value, v.intermediate_value_type).where(v.trial_id == any_(_ids(trial_ids)))
        for trial_id, step, stored, kind in conn.execute(query):
            found[trial_id][step] = rdb_models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(stored, kind)
    return found


def study_of_trial(conn: Any, trial_id: int) -> int | None:
    """The id of the study a trial belongs to (None if there is no such trial)."""
    trials = _TRIALS.c
    return conn.execute(select(trials.study_id).where(trials.trial_id == trial_id)).scalar()


def studies_named_from(engine: Engine, prefix: str) -> list[FrozenStudy]:
    """The studies whose names start with `prefix`, as RDBStorage.get_all_studies makes them,
    read by that prefix (Optuna's own reads every study and its attributes)."""
    study, direction = rdb_models.StudyModel, rdb_models.StudyDirectionModel
    user, system = rdb_models.StudyUserAttributeModel, rdb_models.StudySystemAttributeModel
    with Session(engine) as session:
        rows = session.execute(
            select(study.study_id, study.study_name).where(study.study_name.startswith(prefix, autoescape=True)).order_by(study.study_id)
        ).all()
        ids = [r.study_id for r in rows]
        directions: dict[int, list[StudyDirection]] = defaultdict(list)
        for d in session.scalars(select(direction).where(direction.study_id.in_(ids)).order_by(direction.objective)):
            directions[d.study_id].append(d.direction)
        attrs: dict[Any, dict[int, dict[str, Any]]] = {user: defaultdict(dict), system: defaultdict(dict)}
        for model, by_study in attrs.items():
            for a in session.scalars(select(model).where(model.study_id.in_(ids))):
                by_study[a.study_id][a.key] = json.loads(a.value_json)
    return [
        FrozenStudy(
            study_name=r.study_name,
            direction=None,
            directions=directions[r.study_id],
            user_attrs=attrs[user].get(r.study_id, {}),
            system_attrs=attrs[system].get(r.study_id, {}),
            study_id=r.study_id,
        )
        for r in rows
    ]
