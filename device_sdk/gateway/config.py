"""The gateway's configuration file: its own broker identity, and how to enroll new children.

A JSON file. Its core is the answer of ``POST /api/v1/gateways/`` saved as is (``uid``,
``mqtt``: url, username, credential, ca_cert, and ``gateway_token``); the keys for enrolling
MCUs that are not yet enrolled are added next to it::

    {
      "uid": "gw-lab-1",
      "mqtt": {"url": "mqtts://broker:8883", "username": "gw-lab-1", "credential": "...",
               "ca_cert": "-----BEGIN CERTIFICATE-----..."},
      "gateway_token": "fgt_...",          # this gateway's API token (from the same answer)
      "server": "https://fleet.example",   # enrollment of new children (all three, or none)
      "claim_token": "fet_...",            #   the enrollment token children enroll with
      "hardware": "qemu-mps2-an385",       #   the children's hardware profile
      "state_dir": "gw-state"              # child keys, port memory (default: <file>.state)
    }

The gateway token can do one thing only: add children to this gateway. An operator's API token
(the former ``api_token`` key) is refused: it could do anything an operator can, and has no
place on a field host. Re-provisioning the gateway replaces both its MQTT credential and its
gateway token, so save the whole new answer.

Without the enrollment keys the gateway bridges every MCU it meets, and the broker refuses
(PUBACK 135) the ones an operator has not made its children.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "GatewayConfig"]

log = logging.getLogger(__name__)
_ENROLL_KEYS = ("server", "claim_token", "hardware")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or incomplete."""


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs to know before it opens a port."""

    uid: str
    mqtt_url: str
    mqtt_username: str
    mqtt_credential: str
    ca_cert: str  # PEM of the CA the broker's TLS certificate chains to ("" for plain MQTT)
    state_dir: Path
    server: str | None = None
    claim_token: str | None = None
    hardware: str | None = None
    gateway_token: str | None = None  # adds children to this gateway, and nothing else

    @property
    def enrolls_children(self) -> bool:
        """Return whether the gateway enrolls MCUs it meets and adds them to its children."""
        return all(getattr(self, key) for key in (*_ENROLL_KEYS, "gateway_token"))

    @classmethod
    def load(cls, path: Path, state_dir: Path | None = None) -> GatewayConfig:
        """Read a configuration file; raise ConfigError saying what is wrong."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the gateway configuration {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        _warn_if_readable_by_others(Path(path))
        mqtt = raw.get("mqtt")
        if not isinstance(mqtt, dict):
            raise ConfigError(f"{path}: missing the 'mqtt' object (url, username, credential)")
        uid = _text(raw, "uid", path)
        if "api_token" in raw:
            raise ConfigError(
                f"{path}: 'api_token' (an operator's API token) is no longer used; remove it. "
                "The gateway adds children with its own 'gateway_token', from the answer of "
                "POST /api/v1/gateways/ (re-provision the gateway to get one)")
        given = [key for key in _ENROLL_KEYS if raw.get(key)]
        if given and len(given) != len(_ENROLL_KEYS):
            missing = sorted(set(_ENROLL_KEYS) - set(given))
            raise ConfigError(f"{path}: enrolling children also needs {', '.join(missing)}")
        gateway_token = raw.get("gateway_token") or None
        if given and not gateway_token:
            raise ConfigError(
                f"{path}: enrolling children also needs 'gateway_token' (from the answer of "
                "POST /api/v1/gateways/; re-provision the gateway if it has none)")
        if gateway_token is not None and not isinstance(gateway_token, str):
            raise ConfigError(f"{path}: 'gateway_token' must be a string")
        where = state_dir or Path(raw.get("state_dir") or f"{Path(path).name}.state")
        if not where.is_absolute():
            where = Path(path).resolve().parent / where
        return cls(
            uid=uid,
            mqtt_url=_text(mqtt, "url", path),
            mqtt_username=str(mqtt.get("username") or uid),
            mqtt_credential=_text(mqtt, "credential", path),
            ca_cert=str(mqtt.get("ca_cert") or ""),
            state_dir=where,
            gateway_token=gateway_token,
            **{key: str(raw[key]) if raw.get(key) else None for key in _ENROLL_KEYS},
        )


def _text(mapping: dict[str, Any], key: str, path: Path) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: '{key}' must be a non-empty string")
    return value


def _warn_if_readable_by_others(path: Path) -> None:
    # The file holds the gateway's broker password and its gateway token.
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s holds secrets but is readable by others (chmod 600 it)", path)
