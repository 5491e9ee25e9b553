"""The service's storage numbers new trials from the study's previous trial instead of counting
them (storage.NumberingRDBStorage); the numbers must be exactly Optuna's: 0, 1, 2, ... per study
in creation order, with claims, retries (Optuna's own template path) and plain Optuna processes
creating trials in the same studies at the same time, and trials made from a template (retries,
`add_trial`: Optuna's own code) in between."""

from __future__ import annotations

import threading
from collections.abc import Callable

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from service.engine.optuna_adapter.internals import backend_of
from service.engine.optuna_adapter.numbering import NumberingRDBStorage
from service.engine.storage import make_storage
from service.settings import Settings


def test_new_trials_are_numbered_as_optuna_numbers_them(db_url: str) -> None:
    settings = Settings(database_url=db_url)
    ours = [make_storage(db_url, settings) for _ in range(2)]  # two API processes' storages
    assert all(isinstance(backend_of(s), NumberingRDBStorage) for s in ours)
    plain = optuna.storages.RDBStorage(db_url)  # a user's own Optuna on the same database
    names = [f"numbers-{k}-{id(ours)}" for k in range(2)]
    study_ids = [optuna.create_study(storage=plain, study_name=n)._study_id for n in names]
    errors: list[BaseException] = []

    def each(work: Callable[[int], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                for i in range(25):
                    work(i)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        return run

    def claim(storage: optuna.storages.BaseStorage) -> Callable[[int], None]:
        return lambda i: storage.create_new_trial(study_ids[i % 2])

    def optuna_ask(i: int) -> None:
        optuna.load_study(study_name=names[i % 2], storage=plain).ask()

    def template(i: int) -> None:
        # COMPLETE, not WAITING: the asks above would take a waiting trial instead of making one.
        template = create_trial(
            state=TrialState.COMPLETE, value=0.5, params={"lr": 0.1}, distributions={"lr": FloatDistribution(1e-5, 1.0, log=True)}
        )
        optuna.load_study(study_name=names[(i + 1) % 2], storage=ours[0]).add_trial(template)

    threads = [threading.Thread(target=each(w)) for w in (claim(ours[0]), claim(ours[0]), claim(ours[1]), optuna_ask, template)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for study_id in study_ids:
        trials = sorted(plain.get_all_trials(study_id, deepcopy=False), key=lambda t: t._trial_id)
        assert [t.number for t in trials] == list(range(len(trials)))
    assert sum(len(plain.get_all_trials(s, deepcopy=False)) for s in study_ids) == 5 * 25
    for s in ours:
        backend_of(s).engine.dispose()
    plain.engine.dispose()


@pytest.mark.parametrize("earlier", [0, 3])
def test_a_studys_first_trial_is_number_zero_whatever_other_studies_hold(db_url: str, earlier: int) -> None:
    storage = make_storage(db_url, Settings(database_url=db_url))
    other = optuna.create_study(storage=storage, study_name=f"numbers-other-{earlier}-{id(storage)}")
    for _ in range(earlier):
        other.ask()
    study = optuna.create_study(storage=storage, study_name=f"numbers-first-{earlier}-{id(storage)}")
    assert [study.ask().number for _ in range(3)] == [0, 1, 2]
    backend_of(storage).engine.dispose()
