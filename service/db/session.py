"""SQLAlchemy engines for our tables, tuned for PostgreSQL the same way as Optuna's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings


def engine_kwargs(settings: Settings, application_name: str | None = None) -> dict[str, Any]:
    """Shared by our engine and Optuna's RDBStorage: a bounded pool that survives restarts."""
    return {
        "pool_pre_ping": True,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "connect_args": {
            "application_name": application_name or settings.application_name,
            "options": "-c timezone=UTC",
        },
    }


def make_engine(url: str, settings: Settings, application_name: str | None = None, **overrides: Any) -> Engine:
    """An engine with the service's pool settings; `overrides` replace some of them."""
    return create_engine(url, **{**engine_kwargs(settings, application_name), **overrides})


def ping(engine: Engine) -> None:
    """One round trip to the database (readiness); raises what the connection raises."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
