"""Optuna's own storage test case (optuna.testing.pytest_storages.StorageTestCase, which ships
with the pinned Optuna 5.0) against the service's storage: NumberingRDBStorage under Optuna's
cache, on a database migrated as `hpo migrate` migrates it (our indexes and triggers on
Optuna's tables included). Whatever the service changes in how Optuna's rows are written must
leave Optuna's storage contract as Optuna tests it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from optuna.storages import BaseStorage
from optuna.testing.pytest_storages import StorageTestCase

from service.engine.optuna_adapter.internals import backend_of
from service.engine.storage import make_storage
from service.settings import Settings


@pytest.fixture(scope="module")
def _storage(new_database: Callable[[], str]) -> Iterator[BaseStorage]:
    from service.migrate import migrate

    url = new_database()  # its own database: Optuna's tests count every study in the storage
    settings = Settings(database_url=url)
    migrate(url, settings)
    storage = make_storage(url, settings)
    yield storage
    backend_of(storage).engine.dispose()  # type: ignore[attr-defined]


@pytest.fixture
def storage(_storage: BaseStorage) -> Iterator[BaseStorage]:
    """Every test starts with no study, as with Optuna's own fresh storages."""
    for study in _storage.get_all_studies():
        _storage.delete_study(study._study_id)
    yield _storage


class TestServiceStorage(StorageTestCase):
    pass
