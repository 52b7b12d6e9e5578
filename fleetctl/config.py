"""Where fleetctl finds its server: options, then the environment, then a config file."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fleetctl.errors import Exit, FleetError


def default_config_path() -> Path:
    """Return ``$XDG_CONFIG_HOME/fleetctl/config.toml`` (``~/.config`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fleetctl" / "config.toml"


@dataclass(frozen=True)
class Settings:
    """The server to talk to and how."""

    url: str
    token: str | None
    timeout_s: float = 60.0


def load_settings(url: str | None, token: str | None, config: str | None) -> Settings:
    """Resolve the server URL and token: explicit values, ``FLEET_URL``/``FLEET_TOKEN``, then
    the config file's ``url``/``token`` keys (a ``[default]`` table or top level)."""
    path = Path(config) if config else Path(os.environ.get("FLEETCTL_CONFIG") or
                                            default_config_path())
    data: dict = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise FleetError(f"cannot read {path}: {exc}", Exit.CONFIG) from None
        data = data.get("default", data)
    elif config:
        raise FleetError(f"config file {path} does not exist", Exit.CONFIG)
    url = url or os.environ.get("FLEET_URL") or data.get("url")
    token = token or os.environ.get("FLEET_TOKEN") or data.get("token")
    if not url:
        raise FleetError("no server: set FLEET_URL, pass --url or put url = \"...\" in "
                         f"{path}", Exit.CONFIG)
    return Settings(url=url.rstrip("/"), token=token,
                    timeout_s=float(data.get("timeout_s", 60.0)))
