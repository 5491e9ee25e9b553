"""One team's view of Optuna's storage, for the built-in optuna-dashboard.

Optuna study names are `<team>/<study>`; this storage lists only the team's studies and answers
every call naming another team's study or trial (by id or by name) with KeyError, Optuna's own
"no such study/trial", which the dashboard turns into 404. It delegates everything else to the
process's storage, so the dashboard reads the same cache and connections as the API.

Behind the allow-list of service/api/dashboard_routes.py, and in case something gets past it:
it creates no study (the REST API does, with its definition), deletes no study that has a REST
record (our studies.delete does, with its lease rows and audit event), and shows a trial whose
stored objective is NaN (written by an older version, or by hand) as failed, which is what
Optuna makes of an objective that returns NaN; optuna-dashboard's serializer asserts on NaN,
so the study's page would otherwise answer 500."""

from __future__ import annotations

import copy
import math
from collections.abc import Container, Sequence
from typing import Any

from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, select

from service.db.models import StudyRecord
from service.engine.optuna_adapter import reads as optuna_reads
from service.engine.optuna_adapter.internals import FrozenStudy
from service.errors import Conflict


class TeamStorage(BaseStorage):
    def __init__(self, inner: BaseStorage, team: str, engine: Engine) -> None:
        self._inner = inner
        self._prefix = f"{team}/"
        self._engine = engine
        # A trial never moves to another study, so trial -> study answers can be kept.
        self._trial_study: dict[int, int] = {}

    # ------------------------------------------------------------------ ownership

    def owns_name(self, study_name: str) -> bool:
        return study_name.startswith(self._prefix)

    def owns_study(self, study_id: int) -> bool:
        try:
            return self.owns_name(self._inner.get_study_name_from_id(study_id))
        except KeyError:
            return False

    def study_of_trial(self, trial_id: int) -> int | None:
        if trial_id not in self._trial_study:
            with self._engine.connect() as conn:
                found = optuna_reads.study_of_trial(conn, trial_id)
            if found is None:
                return None
            self._trial_study[trial_id] = found
        return self._trial_study[trial_id]

    def owns_trial(self, trial_id: int) -> bool:
        study_id = self.study_of_trial(trial_id)
        return study_id is not None and self.owns_study(study_id)

    def _study(self, study_id: int) -> None:
        if not self.owns_study(study_id):
            raise KeyError(f"No study with study_id {study_id} exists.")

    def _trial(self, trial_id: int) -> None:
        if not self.owns_trial(trial_id):
            raise KeyError(f"No trial with trial_id {trial_id} exists.")

    # ------------------------------------------------------------------ studies

    def has_rest_record(self, study_name: str) -> bool:
        with self._engine.connect() as conn:
            return conn.execute(select(StudyRecord.id).where(StudyRecord.optuna_name == study_name)).first() is not None

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        raise Conflict("studies are created through the REST API (POST /api/v1/studies), not in the dashboard")

    def delete_study(self, study_id: int) -> None:
        name = self.get_study_name_from_id(study_id)
        if self.has_rest_record(name):
            raise Conflict(f"{name} was created through the REST API; delete it there (DELETE /api/v1/studies/...)")
        self._inner.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._study(study_id)
        self._inner.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._study(study_id)
        self._inner.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        if not self.owns_name(study_name):
            raise KeyError(f"No such study {study_name}.")
        return self._inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        self._study(study_id)
        return self._inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        self._study(study_id)
        return self._inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        self._study(study_id)
        return self._inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        self._study(study_id)
        return self._inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        """The team's studies, read by their name prefix: optuna-dashboard calls this on every
        poll of a study's page, and Optuna's own version reads every team's studies and
        attributes. Otherwise as RDBStorage.get_all_studies makes them."""
        return optuna_reads.studies_named_from(self._engine, self._prefix)

    # ------------------------------------------------------------------ trials

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._study(study_id)
        return self._inner.create_new_trial(study_id, template_trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        self._trial(trial_id)
        self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        self._study(study_id)
        return self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        self._trial(trial_id)
        return self._inner.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        self._trial(trial_id)
        return self._inner.get_trial_param(trial_id, param_name)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        self._trial(trial_id)
        return self._inner.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._trial(trial_id)
        self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._trial(trial_id)
        self._inner.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._trial(trial_id)
        self._inner.set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        self._trial(trial_id)
        return _shown(self._inner.get_trial(trial_id))

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        self._study(study_id)
        asked = states
        if states is not None and TrialState.FAIL in states and TrialState.COMPLETE not in states:
            asked = (*(s for s in TrialState if s in states), TrialState.COMPLETE)  # a NaN result shows as FAIL
        trials = [_shown(t) for t in self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=asked)]
        return trials if states is None else [t for t in trials if t.state in states]

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        self._study(study_id)
        return self._inner.get_n_trials(study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        self._study(study_id)
        best = self._inner.get_best_trial(study_id)
        if not _has_nan(best):
            return best
        # PostgreSQL sorts NaN above every number, so a maximized study's "best" is a NaN trial.
        complete = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            raise ValueError("No trials are completed yet.")
        pick = max if self.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE else min
        return pick(complete, key=lambda t: t.values[0])

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        self._trial(trial_id)
        return self._inner.get_trial_params(trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        self._trial(trial_id)
        return self._inner.get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        self._trial(trial_id)
        return self._inner.get_trial_system_attrs(trial_id)

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._trial(trial_id)
        self._inner.check_trial_is_updatable(trial_id, trial_state)

    def remove_session(self) -> None:
        self._inner.remove_session()


def _has_nan(trial: FrozenTrial) -> bool:
    return trial.values is not None and any(math.isnan(v) for v in trial.values)


def _shown(trial: FrozenTrial) -> FrozenTrial:
    """The trial as the dashboard shows it: one whose stored objective is NaN as failed, with no
    value (a copy: the trial may be the storage cache's own object)."""
    if not _has_nan(trial):
        return trial
    shown = copy.copy(trial)
    shown.state = TrialState.FAIL
    shown.values = None
    return shown
