"""Proof of possession at enrollment: what a device signs, byte for byte.

A device proves it holds the private key it enrolls with by signing a message that binds the
server's fresh nonce (``POST /api/v1/enroll/challenge/``) to everything it asks for: the claim
token (as its SHA-256), its uid ("" when the server derives it from the key), its hardware
profile, its capabilities and the gateway that relays the request ("" when it enrolls itself),
so a relayed signature cannot be taken to another gateway. A gateway attaching a child later
relays the child's signature over an attach message naming the gateway. The messages are deterministic CBOR
(RFC 8949 §4.2.1) arrays, so the server, the SDK and the firmware build the same bytes:

    enroll = ["fleet/v1/enroll", nonce: bstr, token_sha256: bstr .size 32, uid: tstr,
              hardware: tstr, capabilities_sha256: bstr .size 32, via: tstr]
    attach = ["fleet/v1/attach", nonce: bstr, gateway_uid: tstr, uid: tstr]

``capabilities_sha256`` is the SHA-256 of the capabilities JSON object as deterministic CBOR
(a map of the same names and values). Ed25519 keys sign the message itself (RFC 8032); P-256
keys sign it with ECDSA over SHA-256 (DER signature). Nonces and signatures travel as hex.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import cbor2

__all__ = [
    "ATTACH_CONTEXT",
    "ENROLL_CONTEXT",
    "MAX_NONCE_BYTES",
    "MAX_SIGNATURE_BYTES",
    "attach_message",
    "capabilities_digest",
    "enrollment_message",
]

ENROLL_CONTEXT = "fleet/v1/enroll"  # wire value: never change
ATTACH_CONTEXT = "fleet/v1/attach"  # wire value: never change
MAX_NONCE_BYTES = 64
MAX_SIGNATURE_BYTES = 80  # Ed25519: 64; P-256 DER: at most 72


def capabilities_digest(capabilities: Mapping[str, Any]) -> bytes:
    """Return the SHA-256 of ``capabilities`` encoded as deterministic CBOR."""
    return hashlib.sha256(cbor2.dumps(dict(capabilities), canonical=True)).digest()


def enrollment_message(*, nonce: bytes, token: str, uid: str, hardware: str,
                       capabilities: Mapping[str, Any], via: str = "") -> bytes:
    """Return the bytes a device signs to enroll (see the module docstring)."""
    return cbor2.dumps([ENROLL_CONTEXT, bytes(nonce), hashlib.sha256(token.encode()).digest(),
                        uid, hardware, capabilities_digest(capabilities), via], canonical=True)


def attach_message(*, nonce: bytes, gateway_uid: str, uid: str) -> bytes:
    """Return the bytes a child signs so that ``gateway_uid`` may speak for it."""
    return cbor2.dumps([ATTACH_CONTEXT, bytes(nonce), gateway_uid, uid], canonical=True)
