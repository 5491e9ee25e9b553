"""Optuna's exceptions, translated once into ours (service/engine/storage.optuna_errors)."""

from __future__ import annotations

import optuna
import pytest

from service.engine.storage import optuna_errors
from service.errors import Conflict, NotFound


def test_optunas_errors_become_ours_and_our_own_bugs_stay_bugs() -> None:
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(NotFound, match="not found in Optuna's storage"), optuna_errors():
        storage.get_study_id_from_name("no-such-study")
    study = optuna.create_study(storage=storage, study_name="s")
    with pytest.raises(Conflict, match="already exists"), optuna_errors():
        optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(Conflict, match="already finished"), optuna_errors():
        storage.set_trial_intermediate_value(trial._trial_id, 1, 0.5)
    # A KeyError of our own inside the block is a bug: it must not turn into a 404.
    with pytest.raises(KeyError) as raised, optuna_errors():
        {}["ours"]
    assert not isinstance(raised.value, NotFound)
