"""Load, create and encrypt OTA signing keys.

Private keys are stored as PKCS#8 encrypted with the key-encryption key ``FLEET_KEK`` from the
environment (cryptography's best available scheme: AES-256-CBC under a PBKDF2-derived key), so
a copy of the database alone cannot sign. The KEK never touches the database or the repo.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.db.models import QuerySet

from device_sdk.protocol.cose import key_id, raw_public_key
from ota.choices import KeyState
from ota.models import SigningKey


def _kek() -> bytes:
    kek = settings.FLEET_KEK
    if not kek:
        raise ImproperlyConfigured(
            "FLEET_KEK is not set: it encrypts OTA signing keys at rest (scripts/demo.sh makes one)"
        )
    return kek.encode()


def encrypt_private_key(private_key: Ed25519PrivateKey) -> bytes:
    """Serialize a private key as PKCS#8 PEM encrypted with the KEK."""
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(_kek()),
    )


def load_private_key(key: SigningKey) -> Ed25519PrivateKey:
    """Decrypt a stored signing key with the KEK."""
    private = serialization.load_pem_private_key(bytes(key.encrypted_private_key), password=_kek())
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"signing key {key.kid} is not Ed25519")
    return private


def public_key_of(key: SigningKey) -> Ed25519PublicKey:
    """Return the public half of a stored key."""
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.public_key))


def new_signing_key_row(private_key: Ed25519PrivateKey) -> SigningKey:
    """Build (unsaved) the row for a freshly generated key."""
    public = private_key.public_key()
    return SigningKey(
        kid=key_id(public).hex(),
        public_key=raw_public_key(public).hex(),
        encrypted_private_key=encrypt_private_key(private_key),
    )


def active_public_keys() -> QuerySet[SigningKey]:
    """Return the keys devices should trust now (active, and pending activation), oldest first:
    the order devices come to trust them in, which the retirement rule relies on."""
    return SigningKey.objects.filter(state__in=(KeyState.ACTIVE, KeyState.PENDING)).order_by(
        "created_at", "id")


# The SQL of published_public_keys per database alias, compiled on first use.
_published_sql: dict[str, tuple[str, tuple[Any, ...]]] = {}


def published_public_keys() -> list[dict[str, str]]:
    """Return the trusted keys as devices receive them at enrollment: ``[{kid, public_key}]``.

    Every enrollment asks, so the query's SQL is compiled once per process (Django's compiler
    cost more CPU than the query); the query itself still runs every time, so a key another
    process rotates, activates or retires shows in the next answer.
    """
    alias = router.db_for_read(SigningKey)
    compiled = _published_sql.get(alias)
    if compiled is None:
        query = active_public_keys().values_list("kid", "public_key").query
        compiled = _published_sql[alias] = query.get_compiler(using=alias).as_sql()
    with connections[alias].cursor() as cursor:
        cursor.execute(*compiled)
        return [{"kid": kid, "public_key": public} for kid, public in cursor.fetchall()]


def current_signing_key() -> SigningKey | None:
    """Return the key that signs new packages: the newest active one (never a pending one)."""
    return (SigningKey.objects.filter(state=KeyState.ACTIVE)
            .order_by("-created_at", "-id").first())
