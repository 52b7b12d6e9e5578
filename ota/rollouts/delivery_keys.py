"""The key of a package's fan-out (``device_sdk.protocol.fanout``), shared by the controller
(which sends it with each offer) and the carousel (which encrypts with it)."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings


def fanout_key(package_id: int) -> bytes | None:
    """Return the key of package ``package_id``'s fan-out, or None when fan-out access is by
    broker grant (chunks then travel in the clear). Derived from SECRET_KEY: every worker
    computes the same key, nothing is stored."""
    if getattr(settings, "FANOUT_ACCESS", "encrypt") != "encrypt":
        return None
    message = b"fleet fan-out key v1:" + package_id.to_bytes(8, "big")
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).digest()[:16]
