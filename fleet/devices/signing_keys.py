"""The OTA signing public keys a device is told at enrollment."""

from __future__ import annotations

from django.apps import apps


def published_signing_keys() -> list[dict[str, str]]:
    """Return the fleet's active OTA signing public keys as ``[{kid, public_key}]`` (hex).

    The registry app owns the keys; before it is installed the fleet has none to publish.
    """
    if not apps.is_installed("ota"):
        return []
    from ota.signing.keys import active_public_keys

    return [{"kid": k.kid_hex, "public_key": k.public_key_hex} for k in active_public_keys()]
