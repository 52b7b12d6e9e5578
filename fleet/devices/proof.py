"""Proof of possession: the server's enrollment nonces and the check of a device's signature.

Nonces are stateless until used: ``issued_at (8 bytes) || random (16) || HMAC (16)`` under a
key derived from SECRET_KEY, so handing them out to anonymous callers writes nothing. A nonce
is good for ``NONCE_LIFETIME_S`` and once: the first request that proves possession with it
records its digest (``UsedNonce``, unique), and any replay of that signed request is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import time
from datetime import timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from django.conf import settings
from django.db import connection
from django.utils import timezone

from fleet.core.errors import Refused
from fleet.devices.models import UsedNonce

NONCE_LIFETIME_S = 300
_RANDOM_BYTES = 16
_MAC_BYTES = 16
NONCE_BYTES = 8 + _RANDOM_BYTES + _MAC_BYTES


class ProofRefused(Refused):
    """A request's proof of possession was missing, stale, replayed or did not verify."""


def _mac(body: bytes) -> bytes:
    key = hashlib.sha256(b"fleet.devices.proof:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES]


def issue_nonce(now: float | None = None) -> bytes:
    """Return a fresh nonce for a device to sign (nothing is stored)."""
    body = struct.pack(">Q", int(now if now is not None else time.time()))
    body += secrets.token_bytes(_RANDOM_BYTES)
    return body + _mac(body)


def check_nonce(nonce: bytes, now: float | None = None) -> None:
    """Refuse a nonce this server did not issue, or issued too long ago."""
    if len(nonce) != NONCE_BYTES or not hmac.compare_digest(
            _mac(nonce[:-_MAC_BYTES]), nonce[-_MAC_BYTES:]):
        raise ProofRefused("proof_invalid", "The nonce was not issued by this server.", 403)
    issued = struct.unpack(">Q", nonce[:8])[0]
    age = (now if now is not None else time.time()) - issued
    if not -5 <= age <= NONCE_LIFETIME_S:
        raise ProofRefused("proof_expired",
                           "The nonce has expired; ask for a new one and sign again.", 403)


def verify_signature(public_key_pem: str, message: bytes, signature: bytes) -> None:
    """Check ``signature`` over ``message`` by the device key in ``public_key_pem``."""
    key = serialization.load_pem_public_key(public_key_pem.encode())
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:  # parse_public_key admits nothing else
            raise InvalidSignature
    except (InvalidSignature, ValueError):
        raise ProofRefused("proof_invalid",
                           "The signature does not verify with the device's key.", 403) from None


def consume_nonce(nonce: bytes) -> None:
    """Record that ``nonce`` has been used; refuse it if it was before (a replay).

    Runs inside the caller's transaction: a refusal later in the request rolls it back, so the
    device may retry with the same signed request only if nothing was granted. One statement
    (``ON CONFLICT DO NOTHING``: no savepoint round trips); a replay inserts no row.
    """
    digest = hashlib.sha256(nonce).hexdigest()
    table = connection.ops.quote_name(UsedNonce._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (digest, used_at) VALUES (%s, %s) "
            "ON CONFLICT (digest) DO NOTHING",
            [digest, connection.ops.adapt_datetimefield_value(timezone.now())])
        inserted = cursor.rowcount
    if inserted != 1:
        raise ProofRefused("proof_replayed", "This signed request was used before.", 403)
    cutoff = timezone.now() - timedelta(seconds=2 * NONCE_LIFETIME_S)
    if secrets.randbelow(64) == 0:  # now and then: prune what can no longer be replayed
        UsedNonce.objects.filter(used_at__lt=cutoff).delete()


def check_proof(public_key_pem: str, message: bytes, nonce: bytes, signature: bytes) -> None:
    """Verify a proof of possession end to end: a fresh nonce of ours, signed, used once."""
    check_nonce(nonce)
    verify_signature(public_key_pem, message, signature)
    consume_nonce(nonce)
