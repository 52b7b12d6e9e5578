"""Sign and verify COSE_Sign1 messages (RFC 9052) with EdDSA over Ed25519, and nothing else.

Wire layout (wire values: never change)::

    COSE_Sign1 = #6.18([                ; the tag is optional on input, always written
        protected:   bstr .cbor {1: -8},  ; alg: EdDSA, exactly this one parameter
        unprotected: {4: kid},            ; kid: bstr of 1..32 bytes, exactly this one parameter
        payload:     bstr,                ; never detached (nil)
        signature:   bstr,                ; 64 bytes of Ed25519 over Sig_structure
    ])
    Sig_structure = ["Signature1", protected, h'', payload]

The key id convention is :func:`key_id`: the first 8 bytes of SHA-256 over the raw
32-byte public key. Parsing is strict: definite lengths, no duplicate map keys, no bytes
after the message, no parameters beyond the two above. Errors carry the manifest reason
codes because manifests and key rotations are what this envelope carries.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import Any, NamedTuple

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_sdk.protocol.reasons import ProtocolError, Reason

COSE_SIGN1_TAG = 18
HEADER_ALG = 1
HEADER_KID = 4
ALG_EDDSA = -8
PROTECTED_EDDSA = cbor2.dumps({HEADER_ALG: ALG_EDDSA})  # h'A10127'
SIGNATURE_BYTES = 64
KEY_ID_BYTES = 8
MAX_KID_BYTES = 32
MAX_MESSAGE_BYTES = 16384  # manifests are a few hundred bytes; refuse parsing anything huge


def key_id(public_key: Ed25519PublicKey) -> bytes:
    """Return the key id of ``public_key``: SHA-256 of its raw 32 bytes, first 8 bytes."""
    return hashlib.sha256(raw_public_key(public_key)).digest()[:KEY_ID_BYTES]


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """Return the 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def loads_strict(data: bytes) -> Any:
    """Decode the one CBOR item that ``data`` must consist of, with definite lengths only.

    Raises ``ValueError`` for bytes after the item, ``cbor2.CBORError`` for malformed CBOR,
    indefinite lengths, duplicate map keys or nesting deeper than 8.
    """
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(fp, allow_indefinite=False, allow_duplicate_keys=False, max_depth=8)
    item = decoder.decode()
    if fp.tell() != len(data):
        raise ValueError("bytes after the CBOR item")
    return item


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Return the RFC 9052 ``Sig_structure`` bytes that a COSE_Sign1 signature covers."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign1(payload: bytes, private_key: Ed25519PrivateKey, kid: bytes) -> bytes:
    """Return a tagged COSE_Sign1 message carrying ``payload``, signed with ``private_key``."""
    if not 1 <= len(kid) <= MAX_KID_BYTES:
        raise ValueError(f"kid must be 1..{MAX_KID_BYTES} bytes")
    signature = private_key.sign(sig_structure(PROTECTED_EDDSA, payload))
    message = [PROTECTED_EDDSA, {HEADER_KID: kid}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, message))


class Sign1(NamedTuple):
    """The parts of a parsed COSE_Sign1 message; nothing in it is verified yet."""

    protected: bytes
    kid: bytes
    payload: bytes
    signature: bytes
    to_be_signed: bytes


def _is_int(value: object, expected: int | None = None) -> bool:
    """Return whether ``value`` is a CBOR integer (not a bool or float that compares equal)."""
    return type(value) is int and (expected is None or value == expected)


def _is_int_map(value: object, keys: set[int]) -> bool:
    """Return whether ``value`` is a map whose keys are exactly the integers ``keys``."""
    return isinstance(value, Mapping) and all(type(k) is int for k in value) and set(value) == keys


def _malformed(detail: str) -> ProtocolError:
    return ProtocolError(Reason.MANIFEST_MALFORMED, detail)


def parse_sign1(data: bytes) -> Sign1:
    """Split a COSE_Sign1 message into its parts, checking its structure but not its signature.

    Raises ``ProtocolError(MANIFEST_MALFORMED)`` for anything that is not exactly the layout in
    this module's docstring; the algorithm is left to :func:`verify_sign1`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed("message is not bytes")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise _malformed("message too large")
    try:
        item = loads_strict(data)
    except (ValueError, cbor2.CBORError, RecursionError) as exc:
        raise _malformed(f"not CBOR: {exc}") from None
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise _malformed(f"CBOR tag {item.tag}, expected {COSE_SIGN1_TAG}")
        item = item.value
    # cbor2 6 decodes arrays as lists or tuples depending on context: accept both.
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise _malformed("not a four-element array")
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes) or not protected:
        raise _malformed("protected header is not a non-empty bstr")
    if not _is_int_map(unprotected, {HEADER_KID}):
        raise _malformed("unprotected header must be exactly {4: kid}")
    kid = unprotected[HEADER_KID]
    if not isinstance(kid, bytes) or not 1 <= len(kid) <= MAX_KID_BYTES:
        raise _malformed(f"kid must be a bstr of 1..{MAX_KID_BYTES} bytes")
    if not isinstance(payload, bytes):
        raise _malformed("payload is not a bstr")
    if not isinstance(signature, bytes):
        raise _malformed("signature is not a bstr")
    return Sign1(protected, kid, payload, signature, sig_structure(protected, payload))


def check_algorithm(protected: bytes) -> None:
    """Refuse a protected header other than ``{1: -8}`` (EdDSA with no other parameters)."""
    try:
        header = loads_strict(protected)
    except (ValueError, cbor2.CBORError, RecursionError):
        raise _malformed("protected header is not CBOR") from None
    if not isinstance(header, Mapping):
        raise _malformed("protected header is not a map")
    if not _is_int_map(header, {HEADER_ALG}) or not _is_int(header[HEADER_ALG], ALG_EDDSA):
        raise ProtocolError(Reason.MANIFEST_BAD_ALGORITHM, f"protected header {header!r}")


def verify_sign1(
    data: bytes, trusted_keys: Mapping[bytes, Ed25519PublicKey]
) -> tuple[bytes, bytes]:
    """Verify a COSE_Sign1 message and return ``(kid, payload)``.

    Checks, in order: structure (MANIFEST_MALFORMED), algorithm (MANIFEST_BAD_ALGORITHM),
    key id among ``trusted_keys`` (MANIFEST_UNKNOWN_KEY), signature (MANIFEST_BAD_SIGNATURE).
    """
    message = parse_sign1(data)
    check_algorithm(message.protected)
    public_key = trusted_keys.get(message.kid)
    if public_key is None:
        raise ProtocolError(Reason.MANIFEST_UNKNOWN_KEY, f"kid {message.kid.hex()}")
    verify_signature(message, public_key)
    return message.kid, message.payload


def verify_signature(message: Sign1, public_key: Ed25519PublicKey) -> None:
    """Raise ``ProtocolError(MANIFEST_BAD_SIGNATURE)`` unless ``message`` is signed by the key."""
    if len(message.signature) != SIGNATURE_BYTES:
        raise ProtocolError(Reason.MANIFEST_BAD_SIGNATURE, "signature is not 64 bytes")
    try:
        public_key.verify(message.signature, message.to_be_signed)
    except InvalidSignature:
        raise ProtocolError(Reason.MANIFEST_BAD_SIGNATURE, "signature does not verify") from None
