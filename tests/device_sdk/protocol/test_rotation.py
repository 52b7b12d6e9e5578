"""Signing-key rotation: a record signed by a trusted key introduces a new one."""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.protocol.cose import key_id, raw_public_key, sign1
from device_sdk.protocol.manifest import Encoding, Manifest, sign_manifest, verify_manifest
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.trust import (
    KeyRotation,
    apply_rotation,
    rotation_for,
    sign_rotation,
    trusted_key_set,
    verify_rotation,
)


@pytest.fixture(scope="module")
def old_key() -> Ed25519PrivateKey:
    """Make the signing key devices were built with."""
    return Ed25519PrivateKey.from_private_bytes(b"\x11" * 32)


@pytest.fixture(scope="module")
def new_key() -> Ed25519PrivateKey:
    """Make the signing key that replaces it."""
    return Ed25519PrivateKey.from_private_bytes(b"\x22" * 32)


@pytest.fixture
def trusted_keys(old_key: Ed25519PrivateKey) -> dict:
    """Make the key set of a device that trusts only the old key."""
    return trusted_key_set(old_key.public_key())


def some_manifest(sequence: int) -> Manifest:
    """Make a valid raw manifest with ``sequence``."""
    digest = hashlib.sha256(b"model").digest()
    return Manifest(
        sequence=sequence,
        model_name="m",
        model_version="1",
        hardware_profile="hw",
        model_sha256=digest,
        model_size=5,
        encoding=Encoding.RAW,
        transfer_sha256=digest,
        transfer_size=5,
        arena_bytes=1,
        expires_at=2**40,
        package_id=1,
    )


def rotation_refusal(cose: bytes, trusted_keys: dict, current_sequence: int = 0) -> Reason:
    """Return the reason a device refuses the rotation record ``cose`` with."""
    with pytest.raises(ProtocolError) as info:
        apply_rotation(cose, trusted_keys, current_sequence=current_sequence)
    return info.value.reason


def test_valid_rotation_is_accepted(old_key, new_key, trusted_keys) -> None:
    """A record signed by the old key adds the new key; the input set is left unchanged."""
    cose = sign_rotation(rotation_for(new_key.public_key(), sequence=1), old_key)
    keys = apply_rotation(cose, trusted_keys, current_sequence=0)
    assert set(keys) == {key_id(old_key.public_key()), key_id(new_key.public_key())}
    assert set(trusted_keys) == {key_id(old_key.public_key())}
    rotation = verify_rotation(cose, trusted_keys=trusted_keys, current_sequence=0)
    assert rotation.sequence == 1 and rotation.new_kid == key_id(new_key.public_key())


def test_manifests_signed_by_the_new_key_verify_after_rotation(old_key, new_key, trusted_keys):
    """After rotation the device accepts manifests from the new key."""
    manifest_cose = sign_manifest(some_manifest(5), new_key)
    device = {"current_sequence": 0, "hardware_profile": "hw", "now": 0}
    with pytest.raises(ProtocolError) as info:
        verify_manifest(manifest_cose, trusted_keys=trusted_keys, **device)
    assert info.value.reason == Reason.MANIFEST_UNKNOWN_KEY
    rotation = sign_rotation(rotation_for(new_key.public_key(), sequence=1), old_key)
    keys = apply_rotation(rotation, trusted_keys, current_sequence=0)
    assert verify_manifest(manifest_cose, trusted_keys=keys, **device).sequence == 5


def test_retiring_the_old_key_refuses_its_manifests(old_key, new_key, trusted_keys) -> None:
    """A rotation that retires the signer's own key leaves only the new key trusted."""
    old_kid = key_id(old_key.public_key())
    record = rotation_for(new_key.public_key(), sequence=1, retire_kid=old_kid)
    keys = apply_rotation(sign_rotation(record, old_key), trusted_keys, current_sequence=0)
    assert set(keys) == {key_id(new_key.public_key())}
    with pytest.raises(ProtocolError) as info:
        verify_manifest(
            sign_manifest(some_manifest(5), old_key),
            trusted_keys=keys,
            current_sequence=0,
            hardware_profile="hw",
            now=0,
        )
    assert info.value.reason == Reason.MANIFEST_UNKNOWN_KEY


def test_chain_of_rotations(old_key, new_key, trusted_keys) -> None:
    """Each rotation is vouched for by the key the previous one introduced."""
    third = Ed25519PrivateKey.from_private_bytes(b"\x33" * 32)
    first = rotation_for(new_key.public_key(), sequence=1, retire_kid=key_id(old_key.public_key()))
    keys = apply_rotation(sign_rotation(first, old_key), trusted_keys, current_sequence=0)
    second = rotation_for(third.public_key(), sequence=2, retire_kid=key_id(new_key.public_key()))
    keys = apply_rotation(sign_rotation(second, new_key), keys, current_sequence=1)
    assert set(keys) == {key_id(third.public_key())}


def test_rotation_signed_only_by_the_new_key_is_refused(new_key, trusted_keys) -> None:
    """A key cannot vouch for itself: MANIFEST_BAD_ROTATION."""
    cose = sign_rotation(rotation_for(new_key.public_key(), sequence=1), new_key)
    assert rotation_refusal(cose, trusted_keys) == Reason.MANIFEST_BAD_ROTATION


def test_rotation_signed_by_an_unknown_key_is_refused(new_key, trusted_keys) -> None:
    """A record signed by any untrusted key is MANIFEST_BAD_ROTATION."""
    cose = sign_rotation(
        rotation_for(new_key.public_key(), sequence=1), Ed25519PrivateKey.generate()
    )
    assert rotation_refusal(cose, trusted_keys) == Reason.MANIFEST_BAD_ROTATION


def test_rotation_with_a_forged_signature_is_refused(old_key, new_key, trusted_keys) -> None:
    """A record naming the old key's id but not signed by it is MANIFEST_BAD_SIGNATURE."""
    payload = rotation_for(new_key.public_key(), sequence=1).encode()
    cose = sign1(payload, new_key, key_id(old_key.public_key()))
    assert rotation_refusal(cose, trusted_keys) == Reason.MANIFEST_BAD_SIGNATURE


@pytest.mark.parametrize("current", [1, 2])
def test_replayed_rotation_is_refused(old_key, new_key, trusted_keys, current) -> None:
    """A rotation sequence at or below the persisted one is MANIFEST_SEQUENCE_REPLAY."""
    cose = sign_rotation(rotation_for(new_key.public_key(), sequence=1), old_key)
    assert rotation_refusal(cose, trusted_keys, current) == Reason.MANIFEST_SEQUENCE_REPLAY


def _signed(item: dict[int, Any], key: Ed25519PrivateKey) -> bytes:
    return sign1(cbor2.dumps(item, canonical=True), key, key_id(key.public_key()))


def test_rotation_inconsistent_with_the_key_set_is_refused(old_key, new_key, trusted_keys):
    """Wrong new kid, an already trusted key, or retiring an unknown key: BAD_ROTATION."""
    new_raw = raw_public_key(new_key.public_key())
    new_kid = key_id(new_key.public_key())
    old_raw = raw_public_key(old_key.public_key())
    cases = [
        {1: 1, 2: 1, 20: b"\x00" * 8, 21: new_raw},
        {1: 1, 2: 1, 20: key_id(old_key.public_key()), 21: old_raw},
        {1: 1, 2: 1, 20: new_kid, 21: new_raw, 22: b"\x99" * 8},
        {1: 1, 2: 1, 20: new_kid, 21: new_raw, 22: new_kid},
    ]
    for item in cases:
        assert rotation_refusal(_signed(item, old_key), trusted_keys) == (
            Reason.MANIFEST_BAD_ROTATION
        ), item


@pytest.mark.parametrize(
    "item",
    [
        {1: 1, 2: 1, 20: b"\x00" * 8},  # new key missing
        {1: 1, 2: 1, 20: b"\x00" * 7, 21: b"\x00" * 32},
        {1: 1, 2: 1, 20: b"\x00" * 8, 21: b"\x00" * 31},
        {1: 1, 2: "1", 20: b"\x00" * 8, 21: b"\x00" * 32},
        {1: 1, 2: 1, 3: "name", 20: b"\x00" * 8, 21: b"\x00" * 32},  # a manifest key
    ],
)
def test_malformed_rotation_payloads_are_refused(old_key, trusted_keys, item) -> None:
    """Missing or mistyped rotation fields are MANIFEST_MALFORMED."""
    assert rotation_refusal(_signed(item, old_key), trusted_keys) == Reason.MANIFEST_MALFORMED


def test_rotation_and_manifest_cannot_be_mistaken(old_key, new_key, trusted_keys) -> None:
    """A rotation record offered as a manifest, and the reverse, are MANIFEST_MALFORMED."""
    rotation = sign_rotation(rotation_for(new_key.public_key(), sequence=3), old_key)
    with pytest.raises(ProtocolError) as info:
        verify_manifest(
            rotation, trusted_keys=trusted_keys, current_sequence=0, hardware_profile="hw", now=0
        )
    assert info.value.reason == Reason.MANIFEST_MALFORMED
    manifest = sign_manifest(some_manifest(3), old_key)
    assert rotation_refusal(manifest, trusted_keys) == Reason.MANIFEST_MALFORMED


def test_rotation_payload_wire_keys(new_key) -> None:
    """The rotation payload uses keys 1, 2, 20, 21, 22, deterministically encoded."""
    record = KeyRotation(7, raw_public_key(new_key.public_key()), b"\x01" * 8)
    assert list(cbor2.loads(record.encode()).items()) == [
        (1, 1),
        (2, 7),
        (20, key_id(new_key.public_key())),
        (21, raw_public_key(new_key.public_key())),
        (22, b"\x01" * 8),
    ]
    assert KeyRotation.decode(record.encode()) == record


def test_rotation_record_missing_the_new_key_is_malformed_not_a_crash() -> None:
    """A signed record with keys {1, 2, 20, 22} but no 21 is refused with a reason."""
    import cbor2
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey as _Key

    from device_sdk.protocol.cose import key_id as _kid
    from device_sdk.protocol.cose import sign1 as _sign1
    from device_sdk.protocol.reasons import ProtocolError as _Err
    from device_sdk.protocol.reasons import Reason as _Reason
    from device_sdk.protocol.trust import verify_rotation as _verify

    signer = _Key.generate()
    payload = cbor2.dumps({1: 1, 2: 5, 20: b"\x01" * 8, 22: b"\x02" * 8}, canonical=True)
    record = _sign1(payload, signer, _kid(signer.public_key()))
    try:
        _verify(record, trusted_keys={_kid(signer.public_key()): signer.public_key()},
                current_sequence=0)
    except _Err as exc:
        assert exc.reason == _Reason.MANIFEST_MALFORMED
    else:
        raise AssertionError("accepted a rotation record without its key")
