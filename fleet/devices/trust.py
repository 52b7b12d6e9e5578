"""What a device is told to trust at enrollment: OTA signing keys and the broker's CA.

The OTA app owns the signing keys and sits above this one, so it registers where they come
from (``register_signing_key_source``, in its ``AppConfig.ready``); devices never import it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings

SigningKeySource = Callable[[], list[dict[str, str]]]
_signing_key_source: SigningKeySource | None = None


def register_signing_key_source(source: SigningKeySource) -> None:
    """Name the function that lists the fleet's active OTA signing keys (the OTA app does)."""
    global _signing_key_source
    _signing_key_source = source


def published_signing_keys() -> list[dict[str, str]]:
    """Return the fleet's active OTA signing public keys as ``[{kid, public_key}]`` (hex).

    Without a registered source (the OTA app not installed) the fleet has none to publish.
    """
    return _signing_key_source() if _signing_key_source is not None else []


def broker_ca_pem() -> str:
    """Return the PEM of the CA that signed the broker's TLS certificate ("" when none)."""
    path = settings.MQTT_CA_FILE
    return Path(path).read_text() if path and Path(path).exists() else ""
