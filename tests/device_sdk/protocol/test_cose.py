"""COSE_Sign1 with EdDSA: the exact wire layout, and every refusal with its reason."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.protocol.cose import (
    key_id,
    parse_sign1,
    raw_public_key,
    sig_structure,
    sign1,
    verify_sign1,
)
from device_sdk.protocol.reasons import ProtocolError, Reason

PAYLOAD = cbor2.dumps({1: 1, 2: 42, 3: "model"})


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    """Make the fleet's signing key."""
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def kid(signing_key: Ed25519PrivateKey) -> bytes:
    """Return the signing key's id."""
    return key_id(signing_key.public_key())


@pytest.fixture(scope="module")
def trusted_keys(signing_key: Ed25519PrivateKey, kid: bytes) -> dict:
    """Make the key set a device trusts: only the fleet key."""
    return {kid: signing_key.public_key()}


@pytest.fixture(scope="module")
def signed_message(signing_key: Ed25519PrivateKey, kid: bytes) -> bytes:
    """Make a tagged COSE_Sign1 over PAYLOAD."""
    return sign1(PAYLOAD, signing_key, kid)


def flip(data: bytes, bit: int) -> bytes:
    """Return ``data`` with one bit inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def reason_of(data: bytes, trusted_keys: dict) -> Reason:
    """Return the reason ``verify_sign1`` refuses ``data`` with (failing if it accepts it)."""
    with pytest.raises(ProtocolError) as info:
        verify_sign1(data, trusted_keys)
    return info.value.reason


def test_key_id_is_first_8_bytes_of_sha256_of_raw_key(signing_key: Ed25519PrivateKey) -> None:
    """The key id convention is SHA-256 over the raw 32-byte public key, truncated to 8."""
    raw = raw_public_key(signing_key.public_key())
    assert len(raw) == 32
    assert key_id(signing_key.public_key()) == hashlib.sha256(raw).digest()[:8]


def test_layout_is_tag_18_protected_alg_eddsa_unprotected_kid(
    signed_message: bytes, kid: bytes
) -> None:
    """The message is #6.18([h'A10127', {4: kid}, payload, 64-byte signature])."""
    item = cbor2.loads(signed_message)
    assert isinstance(item, cbor2.CBORTag) and item.tag == 18
    protected, unprotected, payload, signature = item.value
    assert protected == bytes.fromhex("a10127")
    assert dict(unprotected) == {4: kid}
    assert payload == PAYLOAD
    assert len(signature) == 64


def test_signature_covers_rfc9052_sig_structure(signed_message: bytes, signing_key) -> None:
    """The signature is over ["Signature1", protected, h'', payload] (RFC 9052 section 4.4)."""
    expected = (
        bytes.fromhex("846a")
        + b"Signature1"
        + bytes.fromhex("43a1012740")
        + bytes([0x40 + len(PAYLOAD)])
        + PAYLOAD
    )
    assert sig_structure(bytes.fromhex("a10127"), PAYLOAD) == expected
    signature = cbor2.loads(signed_message).value[3]
    signing_key.public_key().verify(signature, expected)


def test_verify_returns_kid_and_payload(signed_message: bytes, trusted_keys: dict, kid) -> None:
    """A well-formed message from a trusted key yields its kid and payload."""
    assert verify_sign1(signed_message, trusted_keys) == (kid, PAYLOAD)


def test_untagged_message_is_accepted(signed_message: bytes, trusted_keys: dict) -> None:
    """The tag is optional on input (RFC 9052 allows either by context)."""
    untagged = cbor2.dumps(list(cbor2.loads(signed_message).value))
    assert untagged[0] == 0x84
    assert verify_sign1(untagged, trusted_keys)[1] == PAYLOAD


def test_parse_returns_the_parts_and_to_be_signed(signed_message: bytes, kid: bytes) -> None:
    """parse_sign1 unpacks as (protected, kid, payload, signature, to_be_signed)."""
    protected, got_kid, payload, signature, tbs = parse_sign1(signed_message)
    assert (protected, got_kid, payload) == (bytes.fromhex("a10127"), kid, PAYLOAD)
    assert tbs == sig_structure(protected, payload) and len(signature) == 64


def test_every_flipped_payload_bit_is_a_bad_signature(
    signed_message: bytes, trusted_keys: dict
) -> None:
    """No single bit of the payload can change without MANIFEST_BAD_SIGNATURE."""
    start = signed_message.index(PAYLOAD)
    for bit in range(start * 8, (start + len(PAYLOAD)) * 8):
        assert reason_of(flip(signed_message, bit), trusted_keys) == Reason.MANIFEST_BAD_SIGNATURE


def test_every_flipped_signature_bit_is_a_bad_signature(
    signed_message: bytes, trusted_keys: dict
) -> None:
    """No single bit of the signature can change without MANIFEST_BAD_SIGNATURE."""
    start = len(signed_message) - 64
    for bit in range(start * 8, len(signed_message) * 8):
        assert reason_of(flip(signed_message, bit), trusted_keys) == Reason.MANIFEST_BAD_SIGNATURE


def test_flipped_protected_header_bit_is_refused(signed_message: bytes, trusted_keys: dict) -> None:
    """Turning alg -8 into -7 (ES256) is MANIFEST_BAD_ALGORITHM; any other flip is refused."""
    at = signed_message.index(bytes.fromhex("43a10127")) + 1
    assert reason_of(flip(signed_message, (at + 2) * 8), trusted_keys) == (
        Reason.MANIFEST_BAD_ALGORITHM
    )
    allowed = {Reason.MANIFEST_MALFORMED, Reason.MANIFEST_BAD_ALGORITHM}
    for bit in range(at * 8, (at + 3) * 8):
        assert reason_of(flip(signed_message, bit), trusted_keys) in allowed


def test_unknown_key_id_is_refused(signing_key: Ed25519PrivateKey, trusted_keys: dict) -> None:
    """A message whose kid the device does not trust is MANIFEST_UNKNOWN_KEY."""
    other = Ed25519PrivateKey.generate()
    message = sign1(PAYLOAD, other, key_id(other.public_key()))
    assert reason_of(message, trusted_keys) == Reason.MANIFEST_UNKNOWN_KEY


def test_trusted_kid_with_another_keys_signature_is_bad_signature(
    kid: bytes, trusted_keys: dict
) -> None:
    """Claiming a trusted kid does not help a forger: MANIFEST_BAD_SIGNATURE."""
    message = sign1(PAYLOAD, Ed25519PrivateKey.generate(), kid)
    assert reason_of(message, trusted_keys) == Reason.MANIFEST_BAD_SIGNATURE


def _rebuild(signed_message: bytes, **changes: object) -> bytes:
    protected, unprotected, payload, signature = cbor2.loads(signed_message).value
    parts = {
        "protected": protected,
        "unprotected": dict(unprotected),
        "payload": payload,
        "signature": signature,
    }
    parts.update(changes)
    return cbor2.dumps(cbor2.CBORTag(18, list(parts.values())))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"protected": cbor2.dumps({1: -7})}, Reason.MANIFEST_BAD_ALGORITHM),
        ({"protected": cbor2.dumps({1: -8, 3: 0})}, Reason.MANIFEST_BAD_ALGORITHM),
        ({"protected": cbor2.dumps({1: -8.0})}, Reason.MANIFEST_BAD_ALGORITHM),
        ({"protected": cbor2.dumps([1, -8])}, Reason.MANIFEST_MALFORMED),
        ({"protected": b""}, Reason.MANIFEST_MALFORMED),
        ({"protected": cbor2.dumps({1: -8}) + b"\x00"}, Reason.MANIFEST_MALFORMED),
        ({"unprotected": {}}, Reason.MANIFEST_MALFORMED),
        ({"unprotected": {4: b"k", 5: b"iv"}}, Reason.MANIFEST_MALFORMED),
        ({"unprotected": {4: "text kid"}}, Reason.MANIFEST_MALFORMED),
        ({"unprotected": {4.0: b"12345678"}}, Reason.MANIFEST_MALFORMED),
        ({"payload": None}, Reason.MANIFEST_MALFORMED),
        ({"payload": "text"}, Reason.MANIFEST_MALFORMED),
        ({"signature": [1, 2]}, Reason.MANIFEST_MALFORMED),
        ({"signature": b"\x00" * 63}, Reason.MANIFEST_BAD_SIGNATURE),
    ],
)
def test_structure_and_algorithm_are_strict(
    signed_message: bytes, trusted_keys: dict, change: dict, reason: Reason
) -> None:
    """Each deviation from the fixed layout is refused with its own reason."""
    assert reason_of(_rebuild(signed_message, **change), trusted_keys) == reason


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: m + b"\x00",  # trailing byte
        lambda m: m[:-1],  # truncated
        lambda m: bytes([0xD1]) + m[1:],  # tag 17 (COSE_Mac0)
        lambda m: cbor2.dumps(list(cbor2.loads(m).value)[:3]),  # three elements
        lambda m: cbor2.dumps({"not": "cose"}),
        lambda m: b"",
        lambda m: bytes([0xD2, 0x9F]) + m[2:] + b"\xff",  # indefinite-length array
    ],
)
def test_malformed_envelopes_are_refused(signed_message: bytes, trusted_keys: dict, mangle) -> None:
    """Anything but one definite-length COSE_Sign1 item is MANIFEST_MALFORMED."""
    assert reason_of(mangle(signed_message), trusted_keys) == Reason.MANIFEST_MALFORMED


def test_duplicate_unprotected_key_is_refused(signed_message: bytes, trusted_keys: dict) -> None:
    """A map with a repeated key is ambiguous and therefore MANIFEST_MALFORMED."""
    kid = parse_sign1(signed_message).kid
    original = bytes([0xA1, 0x04, 0x48]) + kid
    duplicated = bytes([0xA2, 0x04, 0x48]) + kid + bytes([0x04, 0x48]) + kid
    assert reason_of(signed_message.replace(original, duplicated), trusted_keys) == (
        Reason.MANIFEST_MALFORMED
    )


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    """Whatever arrives, verification refuses it with a reason rather than crashing."""
    keys = {b"\x01" * 8: Ed25519PrivateKey.from_private_bytes(b"\x02" * 32).public_key()}
    with pytest.raises(ProtocolError):
        verify_sign1(data, keys)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255))
def test_any_changed_byte_is_refused(position: int, value: int) -> None:
    """A message with any byte replaced by a different value never verifies."""
    key = Ed25519PrivateKey.from_private_bytes(b"\x03" * 32)
    kid = key_id(key.public_key())
    message = bytearray(sign1(PAYLOAD, key, kid))
    position %= len(message)
    if message[position] == value:
        return
    message[position] = value
    with pytest.raises(ProtocolError):
        verify_sign1(bytes(message), {kid: key.public_key()})
