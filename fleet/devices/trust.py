"""What a device is told to trust at enrollment: OTA signing keys and the broker's CA."""

from __future__ import annotations

from pathlib import Path

from django.apps import apps
from django.conf import settings


def published_signing_keys() -> list[dict[str, str]]:
    """Return the fleet's active OTA signing public keys as ``[{kid, public_key}]`` (hex).

    The registry app owns the keys; before it is installed the fleet has none to publish.
    """
    if not apps.is_installed("ota"):
        return []
    from ota.signing.keys import active_public_keys

    return [{"kid": k.kid_hex, "public_key": k.public_key_hex} for k in active_public_keys()]


def broker_ca_pem() -> str:
    """Return the PEM of the CA that signed the broker's TLS certificate ("" when none)."""
    path = settings.MQTT_CA_FILE
    return Path(path).read_text() if path and Path(path).exists() else ""
