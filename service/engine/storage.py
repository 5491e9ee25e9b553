"""Optuna's storage on PostgreSQL, one per process, and the translation of Optuna's errors."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import psycopg
import sqlalchemy.exc
from sqlalchemy import Engine
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from service.db.session import engine_kwargs
from service.engine.optuna_adapter.internals import backend_of
from service.engine.optuna_adapter.numbering import NumberingRDBStorage
from service.errors import Conflict, NotFound, ServiceUnavailable
from service.metrics import REAPER_ACTIONS
from service.settings import Settings


# Where Trial.set_constraint keeps a constraint's value (optuna.study._constrained_optimization).
CONSTRAINTS_KEY = "constraints"
# A trial copied in from another study (a clone's carried trials, an import): it informs the
# sampler and the pruner, and is not one of this study's n_trials.
CARRIED_KEY = "hpo:carried_from"


class RetryPerStudy:
    """Optuna's RetryHeartbeatStaleTrialCallback, with each study's own budget.max_retries.

    Optuna takes one callback per storage; the engine tells this one each study's limit before
    it fails stale trials (`retries_for`). A retry inherits the intermediate values, so the
    learning curve continues where the lost trial's stopped."""

    def __init__(self) -> None:
        self._max_retries: dict[str, int] = {}

    def retries_for(self, optuna_name: str, max_retries: int) -> None:
        self._max_retries[optuna_name] = max_retries

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(
                max_retry=self._max_retries.get(study.study_name, 0), inherit_intermediate_values=True
            )
        history = trial.system_attrs.get("retry_history", [])
        retry(study, trial)
        # Optuna's callback queues the copy unless the trial has been retried max_retry times.
        if len(history) + 1 <= self._max_retries.get(study.study_name, 0):
            REAPER_ACTIONS.labels(action="retried").inc()


def make_storage(url: str, settings: Settings) -> BaseStorage:
    """RDBStorage wrapped in Optuna's own per-process cache (what `optuna.load_study` would do).

    Heartbeats are Optuna's: claims, heartbeats and reports record them, and a trial whose last
    heartbeat is older than the lease is stale (`optuna.storages.fail_stale_trials`).
    Tables are made by `hpo migrate`, never by a serving process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = NumberingRDBStorage(
            url,
            engine_kwargs=engine_kwargs(settings, f"{settings.application_name}-optuna"),
            skip_table_creation=True,
            heartbeat_interval=max(1, math.ceil(settings.heartbeat_seconds)),
            grace_period=max(1, math.ceil(settings.lease_seconds)),
            heartbeat_stale_trial_callback=RetryPerStudy(),
        )
    return optuna.storages.get_storage(rdb)


def database_engine(storage: BaseStorage) -> Engine | None:
    """The SQLAlchemy engine of the storage's database (None when it has none: an in-memory
    storage, which some tests use)."""
    backend = backend_of(storage)
    return backend.engine if isinstance(backend, RDBStorage) else None


def grace_period(storage: BaseStorage) -> float:
    """Seconds without a heartbeat before Optuna's stale-trial check fails a trial."""
    return float(getattr(backend_of(storage), "grace_period", None) or 0)


def retry_callback(storage: BaseStorage) -> RetryPerStudy:
    callback = storage.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
    assert isinstance(callback, RetryPerStudy)
    return callback


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
        # Optuna's storages answer "no such study/trial" with a KeyError; one out of our own
        # code in the block is a bug, and stays one (a 500, not a 404).
        if not _raised_in_optuna(exc):
            raise
        raise NotFound(f"not found in Optuna's storage: {exc}") from exc
    except optuna.exceptions.UpdateFinishedTrialError as exc:
        raise Conflict(f"trial already finished: {exc}") from exc
    except optuna.exceptions.StorageInternalError as exc:
        # Optuna wraps every SQLAlchemy error of a commit in this; when the cause is a lost
        # connection the caller may retry, anything else is a bug and stays a 500.
        if database_down(exc) or transaction_conflict(exc):
            raise ServiceUnavailable("the database is unavailable; retry shortly") from exc
        raise


def _raised_in_optuna(exc: BaseException) -> bool:
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and str(frame.tb_frame.f_globals.get("__name__", "")).split(".")[0] == "optuna"


# What "no database right now" looks like, rather than a bug: connection refused or dropped,
# an exhausted pool.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


# Every exception that may come of the database being away or in conflict, Optuna's wrapper of
# them included (the API turns them into 503s: service/api/errors.py).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    sqlalchemy.exc.DBAPIError,
    optuna.exceptions.StorageInternalError,
)

# The storage type the rest of the service holds (Optuna's, under make_storage's cache).
Storage = BaseStorage


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


def transaction_conflict(exc: BaseException | None) -> bool:
    """A deadlock or serialization failure: PostgreSQL rolled one side back; retrying works."""
    # SQLSTATE class 40: transaction rollback (40P01 deadlock, 40001 serialization failure).
    return any(isinstance(e, psycopg.Error) and (e.sqlstate or "").startswith("40") for e in _chain(exc))


def database_down(exc: BaseException | None) -> bool:
    """Whether `exc`, or what it wraps, is a lost or refused database connection."""
    if transaction_conflict(exc):
        return False
    return any(isinstance(e, CONNECTION_ERRORS) for e in _chain(exc))


def not_the_studys_fault(exc: BaseException) -> bool:
    """A failure that says nothing about the study it happened on: the database went away, or
    a deadlock picked this transaction (service/engine/team_claims.py)."""
    return isinstance(exc, ServiceUnavailable) or database_down(exc) or transaction_conflict(exc)
