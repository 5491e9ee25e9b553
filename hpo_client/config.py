"""Where the service URL and the token come from: arguments (CLI flags) first, then the
environment (``HPO_SERVER`` or ``HPO_SERVER_URL``, ``HPO_TOKEN``), then the config file that
``hpo up`` writes: ``$HPO_CONFIG`` if set, else ``$XDG_CONFIG_HOME/hpo/client.yaml`` (by default
``~/.config/hpo/client.yaml``), YAML ``{server: ..., token: ...}``, mode 0600."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from hpo_client.errors import ConfigError

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    """The client's settings from the environment (HPO_ prefix); :func:`load_settings` adds
    arguments and the config file."""

    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore", populate_by_name=True)

    # HPO_SERVER, or HPO_SERVER_URL (the name the worker and `hpo token` read).
    server: str | None = Field(None, validation_alias=AliasChoices("HPO_SERVER", "HPO_SERVER_URL"))
    token: str | None = Field(None, repr=False)
    # HPO_CONFIG: the config file; None is the default place (see config_path).
    config: Path | None = None
    xdg_config_home: Path | None = Field(None, validation_alias="XDG_CONFIG_HOME")
    timeout: float = Field(30.0, gt=0)

    @property
    def config_path(self) -> Path:
        if self.config is not None:
            return self.config.expanduser()
        base = self.xdg_config_home.expanduser() if self.xdg_config_home else Path.home() / ".config"
        return base / "hpo" / "client.yaml"


def config_path() -> Path:
    """The config file this environment uses (it may not exist)."""
    return ClientSettings().config_path


def read_config(path: Path) -> dict[str, Any]:
    """The config file's {server, token}; {} when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the config file {path} must be a mapping like {{server: ..., token: ...}}")
    return {k: str(data[k]) for k in ("server", "token") if data.get(k) is not None}


def write_config(server: str, token: str, path: Path | str | None = None) -> Path:
    """Write {server, token} to the config file (created with mode 0600, its folder 0700) and
    return where. The file is replaced atomically; nobody else can read the token meanwhile."""
    target = Path(path).expanduser() if path is not None else config_path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = yaml.safe_dump({"server": server, "token": token}, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=".client-", suffix=".yaml", dir=target.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_settings(server: str | None = None, token: str | None = None) -> ClientSettings:
    """Settings with each of server and token taken from the first that has it: the arguments,
    the environment, the config file. The server defaults to http://127.0.0.1:8000; the token
    stays None when none of them has one (the caller says what to do)."""
    env = ClientSettings()
    server = server or env.server
    token = token or env.token
    if not server or not token:
        stored = read_config(env.config_path)
        server = server or stored.get("server")
        token = token or stored.get("token")
    return env.model_copy(update={"server": (server or DEFAULT_SERVER).rstrip("/"), "token": token or None})
