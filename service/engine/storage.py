"""Optuna's storage on PostgreSQL, one per process, and the translation of Optuna's errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.storages import BaseStorage

from service.db.session import engine_kwargs
from service.errors import Conflict, NotFound
from service.settings import Settings


def make_storage(url: str, settings: Settings) -> BaseStorage:
    """RDBStorage wrapped in Optuna's own per-process cache (what `optuna.load_study` would do).

    Tables are made by `hpo migrate`, never by a serving process."""
    rdb = optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs(settings, f"{settings.application_name}-optuna"),
        skip_table_creation=True,
    )
    return optuna.storages.get_storage(rdb)


def optuna_study_name(team: str, study: str) -> str:
    # Visible in optuna-dashboard, so it shows who owns what.
    return f"{team}/{study}"


@contextmanager
def optuna_errors() -> Iterator[None]:
    """Optuna's exceptions, translated once into ours."""
    try:
        yield
    except optuna.exceptions.DuplicatedStudyError as exc:
        raise Conflict(f"study already exists: {exc}") from exc
    except KeyError as exc:
        raise NotFound(f"not found in Optuna's storage: {exc}") from exc
    except optuna.exceptions.UpdateFinishedTrialError as exc:
        raise Conflict(f"trial already finished: {exc}") from exc
