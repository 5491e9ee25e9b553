"""The worker process's one Settings object (HPO_ prefix). Nothing else in the worker reads
the environment; command-line flags override these."""

from __future__ import annotations

import os
import socket

from pydantic_settings import BaseSettings, SettingsConfigDict


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore")

    server_url: str = "http://127.0.0.1:8000"
    token: str | None = None
    device: str | None = None  # None: cuda when available, else cpu
    worker_id: str | None = None
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    request_timeout: float = 30.0
