"""One team's view of Optuna's storage, for the built-in optuna-dashboard.

Optuna study names are `<team>/<study>`; this storage lists only the team's studies and answers
every call naming another team's study or trial (by id or by name) with KeyError, Optuna's own
"no such study/trial", which the dashboard turns into 404. It delegates everything else to the
process's storage, so the dashboard reads the same cache and connections as the API."""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, text


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
                found = conn.execute(text("SELECT study_id FROM trials WHERE trial_id = :t"), {"t": trial_id}).scalar()
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

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        if study_name is None or not self.owns_name(study_name):
            raise ValueError(f"study names of this team start with {self._prefix!r}")
        return self._inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._study(study_id)
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
        return [s for s in self._inner.get_all_studies() if self.owns_name(s.study_name)]

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
        return self._inner.get_trial(trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        self._study(study_id)
        return self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        self._study(study_id)
        return self._inner.get_n_trials(study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        self._study(study_id)
        return self._inner.get_best_trial(study_id)

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
