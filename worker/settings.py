"""The worker process's one Settings object (HPO_ prefix). Nothing else in the worker reads
the environment; command-line flags override these."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.spec.fusion import MAX_GROUP


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore")

    server_url: str = "http://127.0.0.1:8000"
    token: str | None = None
    device: str | None = None  # None: cuda when available, else cpu
    worker_id: str | None = None
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    # Trials run at once on the device, each in a process of its own (worker/slots.py).
    slots: int = Field(1, ge=1)
    # Trials trained at once as one batched model (worker/fused/); 1: not fused.
    fuse: int = Field(1, ge=1, le=MAX_GROUP)
    request_timeout: float = 30.0
    # Where datasets are read from and downloaded to (passed to the trainer and to user workloads).
    data_root: Path | None = None
    # User workloads run only when allowed here. Lists are JSON in the environment, e.g.
    # HPO_ALLOW_PLUGINS='["mypkg.*:train"]' (fnmatch on the entry as written) and
    # HPO_ALLOW_COMMANDS='["examples/*.py"]' (matched on real paths, `*` within one directory,
    # `**` across directories; relative patterns are relative to the worker's working directory).
    allow_plugins: list[str] = Field(default_factory=list)
    allow_commands: list[str] = Field(default_factory=list)
    # Seconds a plugin or command trial may run when its workload sets no timeout_seconds.
    trial_timeout: float | None = Field(None, gt=0)
    # Address-space cap (RLIMIT_AS) for plugin and command processes, in MiB. CUDA reserves a
    # lot of virtual memory, so on GPUs leave this unset or make it generous.
    trial_memory_mb: int | None = Field(None, ge=16)
    # Append one JSON line per report the service acknowledged (HPO_ACK_LOG; for the chaos
    # harness, which checks that no acknowledged report is lost): trial_id, number, study, step,
    # value, worker_id.
    ack_log: Path | None = None
