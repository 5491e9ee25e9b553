"""The one Settings object of a service process. Nothing else reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def normalize_database_url(url: str) -> str:
    """Plain `postgresql://` URLs get the psycopg 3 driver, the only one we install."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore")

    # None: start an embedded PostgreSQL (pgserver) in `data_dir`, so the quickstart runs real SQL.
    database_url: str | None = None
    data_dir: Path = Path(".hpo")

    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = Field(1, ge=1, description="uvicorn worker processes for `hpo serve`")

    # A worker that is silent for a whole lease loses its trial; it heartbeats several times per lease.
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)

    pool_size: int = Field(5, ge=1)
    max_overflow: int = Field(5, ge=0)
    pool_timeout: float = Field(30.0, gt=0)
    application_name: str = "hpo-service"
    log_level: str = "info"

    @field_validator("database_url")
    @classmethod
    def _driver(cls, v: str | None) -> str | None:
        return normalize_database_url(v) if v else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
