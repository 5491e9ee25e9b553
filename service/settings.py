"""The one Settings object of a service process. Nothing else reads the environment."""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator
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
    # Report batches in the database at once per API process (service/api/report_batcher.py),
    # each on a connection of its own.
    report_batches: int = Field(2, ge=1, le=64)

    # A worker that is silent for a whole lease loses its trial; it heartbeats several times per lease.
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)

    # The reaper fails trials whose Optuna heartbeat is older than lease_seconds and retries them
    # (budget.max_retries); every API process runs it, one at a time (an advisory lock).
    reaper_seconds: float = Field(10.0, gt=0)
    # Checkpoints go to an optuna.artifacts store: this directory (shared by every API process;
    # default <data_dir>/artifacts), or S3 when artifact_s3_bucket is set (needs boto3).
    artifact_dir: Path | None = None
    artifact_s3_bucket: str | None = None
    # Finished trials' checkpoints are removed after this long, except the best trial's.
    checkpoint_retention_seconds: float = Field(24 * 3600.0, ge=0)

    # Request bodies over these sizes get 413 (by Content-Length, and by counting when it is
    # absent or wrong): JSON/YAML bodies, and the checkpoint upload (octet-stream) separately.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_checkpoint_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # An Optuna SQLite file uploaded to POST /api/v1/studies/{name}/import.
    max_import_bytes: int = Field(256 * 1024 * 1024, ge=1024)

    # The built-in optuna-dashboard (/dashboard): its login cookie is `Secure` unless this is
    # false (plain-http local use: `hpo up`, tests); a login lasts this long at most.
    cookie_secure: bool = True
    dashboard_session_seconds: float = Field(8 * 3600.0, gt=0)

    # Refused tokens (401) a client address may cause per minute before its requests with
    # credentials get 429 until the minute is over; 0 turns the limit off (service/api/auth_throttle.py).
    auth_failures_per_minute: int = Field(120, ge=0)
    # Plots and reports draw with matplotlib (and fANOVA): at most this many at once per API
    # process; a request waits up to render_wait_seconds for its turn, then gets 503.
    render_concurrency: int = Field(2, ge=1)
    render_wait_seconds: float = Field(10.0, ge=0)
    # A request body that stops arriving for this long is answered 408 and its connection closed.
    body_timeout_seconds: float = Field(30.0, gt=0)
    # /docs, /redoc and /openapi.json: open without a token (they hold no team data); false hides them.
    api_docs: bool = True

    # GET /metrics (Prometheus): open to a scrape that sends this as its bearer token, or that
    # comes from one of these networks (the TCP peer uvicorn reports; service/api/metrics.py).
    # The default opens it to this host only; [] with a token set requires the token everywhere.
    metrics_token: SecretStr | None = None
    metrics_networks: list[IPvAnyNetwork] = Field(default_factory=lambda: [IPv4Network("127.0.0.1/32"), IPv6Network("::1/128")])

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


def artifact_dir(settings: Settings) -> Path:
    return settings.artifact_dir or settings.data_dir / "artifacts"
