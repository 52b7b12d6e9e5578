"""Secrets of the devices app: claim tokens, gateway API tokens, device public keys, MQTT
credentials."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleet.devices.choices import KeyAlgorithm

TOKEN_PREFIX = "fet_"
GATEWAY_TOKEN_PREFIX = "fgt_"  # never 40 hex characters: cannot be taken for a user's API token
MAX_PEM_BYTES = 4096


def new_claim_token() -> str:
    """Return a fresh claim token: a recognisable prefix and 192 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def new_gateway_token() -> str:
    """Return a fresh gateway API token: a recognisable prefix and 256 random bits."""
    return GATEWAY_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Return the SHA-256 hex digest under which a high-entropy secret is stored.

    A plain hash is enough: the secrets are random, so there is nothing to brute-force.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def new_mqtt_password() -> str:
    """Return a fresh MQTT password for a device (shown to it once, at enrollment)."""
    return secrets.token_urlsafe(24)


class InvalidPublicKey(ValueError):
    """The PEM given is not an Ed25519 or P-256 public key."""


@dataclass(frozen=True)
class DevicePublicKey:
    """A parsed device public key, normalised to canonical PEM."""

    pem: str
    fingerprint: str  # SHA-256 hex of the DER SubjectPublicKeyInfo
    algorithm: KeyAlgorithm


def parse_public_key(pem: str) -> DevicePublicKey:
    """Parse a device's PEM public key; accept Ed25519 and ECDSA P-256 only."""
    if not isinstance(pem, str) or len(pem) > MAX_PEM_BYTES:
        raise InvalidPublicKey("public_key must be a PEM string of at most 4096 bytes")
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise InvalidPublicKey(f"not a PEM public key: {exc}") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        algorithm = KeyAlgorithm.ED25519
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        algorithm = KeyAlgorithm.P256
    else:
        raise InvalidPublicKey("only Ed25519 and ECDSA P-256 keys are accepted")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    canonical = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return DevicePublicKey(canonical, hashlib.sha256(der).hexdigest(), algorithm)


def default_uid(fingerprint: str) -> str:
    """Derive a device id from its key when the device does not bring its own serial."""
    return "dev-" + fingerprint[:16]
