"""Manifest payload wire format and the device-side check, each refusal with its reason."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.protocol.cose import key_id, sign1
from device_sdk.protocol.manifest import Encoding, Manifest, sign_manifest, verify_manifest
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.trust import trusted_key_set

NOW = 1_800_000_000
MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4
BASE = b"\x1c\x00\x00\x00TFL3" + bytes(range(255, -1, -1)) * 4


def sha(data: bytes) -> bytes:
    """Return SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


def make_manifest(**changes: Any) -> Manifest:
    """Make a valid raw manifest for profile ``cortex-m4``, with ``changes`` applied."""
    fields: dict[str, Any] = {
        "sequence": 10,
        "model_name": "kws",
        "model_version": "1.2.0",
        "hardware_profile": "cortex-m4",
        "model_sha256": sha(MODEL),
        "model_size": len(MODEL),
        "encoding": Encoding.RAW,
        "transfer_sha256": sha(MODEL),
        "transfer_size": len(MODEL),
        "arena_bytes": 20_000,
        "expires_at": NOW + 3600,
        "package_id": 77,
    }
    fields.update(changes)
    return Manifest(**fields)


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    """Make the fleet's signing key."""
    return Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)


@pytest.fixture(scope="module")
def trusted_keys(signing_key: Ed25519PrivateKey) -> dict:
    """Make the key set a device trusts."""
    return trusted_key_set(signing_key.public_key())


@pytest.fixture
def manifest() -> Manifest:
    """Make a valid raw manifest."""
    return make_manifest()


@pytest.fixture
def delta_manifest() -> Manifest:
    """Make a valid delta manifest against BASE."""
    return make_manifest(
        encoding=Encoding.DELTA,
        transfer_sha256=sha(b"delta"),
        transfer_size=5,
        base_sha256=sha(BASE),
    )


def check(cose: bytes, trusted_keys: dict, **overrides: Any) -> Manifest:
    """Run the device check with the device of make_manifest(), plus ``overrides``."""
    device: dict[str, Any] = {
        "trusted_keys": trusted_keys,
        "current_sequence": 9,
        "hardware_profile": "cortex-m4",
        "now": NOW,
        "slot_bytes": 64 * 1024,
        "arena_bytes": 32 * 1024,
        "running_model_sha256": sha(BASE),
    }
    device.update(overrides)
    return verify_manifest(cose, **device)


def refusal(cose: bytes, trusted_keys: dict, **overrides: Any) -> Reason:
    """Return the reason the device check refuses ``cose`` with."""
    with pytest.raises(ProtocolError) as info:
        check(cose, trusted_keys, **overrides)
    return info.value.reason


def test_wire_keys_are_fixed(delta_manifest: Manifest) -> None:
    """The payload uses integer keys 1..14 exactly as manifest.py's key table, ascending."""
    m = delta_manifest
    payload = m.encode()
    assert list(cbor2.loads(payload).items()) == [
        (1, 1),
        (2, 10),
        (3, "kws"),
        (4, "1.2.0"),
        (5, "cortex-m4"),
        (6, sha(MODEL)),
        (7, len(MODEL)),
        (8, 2),
        (9, sha(b"delta")),
        (10, 5),
        (11, sha(BASE)),
        (12, 20_000),
        (13, NOW + 3600),
        (14, 77),
    ]
    assert payload == cbor2.dumps(cbor2.loads(payload), canonical=True)


def test_raw_manifest_has_no_base_key(manifest: Manifest) -> None:
    """Key 11 appears only for a delta."""
    assert 11 not in cbor2.loads(manifest.encode())


@pytest.mark.parametrize("encoding", list(Encoding))
def test_encode_decode_round_trip(encoding: Encoding) -> None:
    """decode(encode(m)) == m for every encoding."""
    extra: dict[str, Any] = {}
    if encoding != Encoding.RAW:
        extra = {"transfer_sha256": sha(b"t"), "transfer_size": 1}
    if encoding == Encoding.DELTA:
        extra["base_sha256"] = sha(BASE)
    m = make_manifest(encoding=encoding, **extra)
    assert Manifest.decode(m.encode()) == m
    assert isinstance(Manifest.decode(m.encode()).encoding, Encoding)


def test_verify_returns_the_manifest(manifest, signing_key, trusted_keys) -> None:
    """A good manifest for this device passes every check and comes back decoded."""
    assert check(sign_manifest(manifest, signing_key), trusted_keys) == manifest


def test_limits_given_as_none_are_not_checked(delta_manifest, signing_key, trusted_keys) -> None:
    """Slot, arena and running model are optional for callers that do not know them."""
    cose = sign_manifest(delta_manifest, signing_key)
    assert (
        check(cose, trusted_keys, slot_bytes=None, arena_bytes=None, running_model_sha256=None)
        == delta_manifest
    )


@pytest.mark.parametrize("current", [10, 11, 2**40])
def test_sequence_equal_or_lower_is_a_replay(manifest, signing_key, trusted_keys, current) -> None:
    """A device accepts only a sequence above the one it persisted."""
    cose = sign_manifest(manifest, signing_key)
    assert refusal(cose, trusted_keys, current_sequence=current) == (
        Reason.MANIFEST_SEQUENCE_REPLAY
    )


@pytest.mark.parametrize("now", [NOW + 3600, NOW + 3601, 2**40])
def test_expired_manifest_is_refused(manifest, signing_key, trusted_keys, now) -> None:
    """From its expiry second on a manifest is MANIFEST_EXPIRED."""
    assert refusal(sign_manifest(manifest, signing_key), trusted_keys, now=now) == (
        Reason.MANIFEST_EXPIRED
    )


def test_other_hardware_profile_is_refused(manifest, signing_key, trusted_keys) -> None:
    """A package built for another hardware class is MANIFEST_WRONG_HARDWARE."""
    cose = sign_manifest(manifest, signing_key)
    assert refusal(cose, trusted_keys, hardware_profile="cortex-m0") == (
        Reason.MANIFEST_WRONG_HARDWARE
    )


def test_model_larger_than_slot_is_refused(manifest, signing_key, trusted_keys) -> None:
    """A model that does not fit the slot is MANIFEST_TOO_LARGE; an exact fit is fine."""
    cose = sign_manifest(manifest, signing_key)
    assert refusal(cose, trusted_keys, slot_bytes=len(MODEL) - 1) == Reason.MANIFEST_TOO_LARGE
    assert check(cose, trusted_keys, slot_bytes=len(MODEL)) == manifest


def test_arena_larger_than_firmware_is_refused(manifest, signing_key, trusted_keys) -> None:
    """A model needing more arena than compiled in is MANIFEST_ARENA_TOO_SMALL."""
    cose = sign_manifest(manifest, signing_key)
    assert refusal(cose, trusted_keys, arena_bytes=19_999) == Reason.MANIFEST_ARENA_TOO_SMALL


def test_delta_against_another_running_model_is_refused(
    delta_manifest, signing_key, trusted_keys
) -> None:
    """A delta whose base is not the running model is DELTA_BASE_MISMATCH."""
    cose = sign_manifest(delta_manifest, signing_key)
    assert refusal(cose, trusted_keys, running_model_sha256=sha(MODEL)) == (
        Reason.DELTA_BASE_MISMATCH
    )


def test_unknown_key_is_refused(manifest, trusted_keys) -> None:
    """A manifest signed by a key the device does not know is MANIFEST_UNKNOWN_KEY."""
    cose = sign_manifest(manifest, Ed25519PrivateKey.generate())
    assert refusal(cose, trusted_keys) == Reason.MANIFEST_UNKNOWN_KEY


def test_flipped_payload_bit_is_a_bad_signature(manifest, signing_key, trusted_keys) -> None:
    """Changing the sequence number in transit breaks the signature."""
    cose = bytearray(sign_manifest(manifest, signing_key))
    cose[cose.index(bytes([0x02, 10]))] ^= 0x01
    assert refusal(bytes(cose), trusted_keys) == Reason.MANIFEST_BAD_SIGNATURE


def test_checks_run_in_the_documented_order(signing_key, trusted_keys) -> None:
    """Each check wins over every later one."""
    bad = make_manifest(sequence=1, expires_at=NOW - 1, hardware_profile="x", arena_bytes=2**31)
    cose = sign_manifest(bad, signing_key)
    assert refusal(cose, trusted_keys) == Reason.MANIFEST_SEQUENCE_REPLAY
    cose = sign_manifest(replace(bad, sequence=99), signing_key)
    assert refusal(cose, trusted_keys) == Reason.MANIFEST_EXPIRED
    cose = sign_manifest(replace(bad, sequence=99, expires_at=NOW + 1), signing_key)
    assert refusal(cose, trusted_keys) == Reason.MANIFEST_WRONG_HARDWARE
    cose = sign_manifest(replace(bad, sequence=1), Ed25519PrivateKey.generate())
    assert refusal(cose, trusted_keys) == Reason.MANIFEST_UNKNOWN_KEY


def _signed_payload(item: Any, signing_key: Ed25519PrivateKey, canonical: bool = True) -> bytes:
    payload = cbor2.dumps(item, canonical=canonical)
    return sign1(payload, signing_key, key_id(signing_key.public_key()))


def test_unsupported_format_version_is_refused(manifest, signing_key, trusted_keys) -> None:
    """A signed manifest of format version 2 is MANIFEST_UNSUPPORTED_VERSION, not malformed."""
    item = cbor2.loads(manifest.encode())
    item[1] = 2
    item[99] = "something new"
    assert refusal(_signed_payload(item, signing_key), trusted_keys) == (
        Reason.MANIFEST_UNSUPPORTED_VERSION
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop(2),  # sequence missing
        lambda d: d.pop(1),  # version missing
        lambda d: d.update({2: -1}),
        lambda d: d.update({2: True}),
        lambda d: d.update({2: 2**64}),
        lambda d: d.update({7: 2**32}),
        lambda d: d.update({3: ""}),
        lambda d: d.update({3: "x" * 65}),
        lambda d: d.update({3: b"kws"}),
        lambda d: d.update({6: b"\x00" * 31}),
        lambda d: d.update({8: 3}),
        lambda d: d.update({11: b"\x00" * 32}),  # base digest on a raw manifest
        lambda d: d.update({10: 1}),  # raw transfer size differs from model size
        lambda d: d.update({15: 0}),  # unknown key
        lambda d: d.update({20: b"\x00" * 8}),  # a rotation key
        lambda d: d.update({"3": "kws"}),  # text key
    ],
)
def test_malformed_signed_payloads_are_refused(manifest, signing_key, trusted_keys, mutate):
    """A signed payload with a missing, mistyped or unknown field is MANIFEST_MALFORMED."""
    item = dict(cbor2.loads(manifest.encode()))
    mutate(item)
    assert refusal(_signed_payload(item, signing_key), trusted_keys) == Reason.MANIFEST_MALFORMED


def test_non_deterministic_encoding_is_refused(manifest, signing_key, trusted_keys) -> None:
    """Keys out of order (or any non-shortest form) are MANIFEST_MALFORMED."""
    item = dict(reversed(list(cbor2.loads(manifest.encode()).items())))
    cose = _signed_payload(item, signing_key, canonical=False)
    assert refusal(cose, trusted_keys) == Reason.MANIFEST_MALFORMED


def test_payload_not_a_map_is_refused(signing_key, trusted_keys) -> None:
    """A signed array or trailing garbage is MANIFEST_MALFORMED."""
    kid = key_id(signing_key.public_key())
    for payload in (cbor2.dumps([1, 2]), cbor2.dumps({1: 1}) + b"\x00", b"\xff"):
        cose = sign1(payload, signing_key, kid)
        assert refusal(cose, trusted_keys) == Reason.MANIFEST_MALFORMED


@pytest.mark.parametrize(
    "changes",
    [
        {"sequence": -1},
        {"model_name": ""},
        {"model_sha256": b"short"},
        {"encoding": 5},
        {"encoding": Encoding.DELTA},  # no base digest
        {"base_sha256": sha(BASE)},  # base digest on raw
        {"transfer_size": 1},
        {"format_version": 2},
    ],
)
def test_constructor_refuses_what_the_wire_would(changes: dict) -> None:
    """The server cannot sign a manifest that devices would refuse as malformed."""
    with pytest.raises(ValueError):
        make_manifest(**changes)


manifests = st.builds(
    make_manifest,
    sequence=st.integers(0, 2**64 - 1),
    model_name=st.text(min_size=1, max_size=16),
    model_version=st.text(min_size=1, max_size=16),
    arena_bytes=st.integers(0, 2**32 - 1),
    expires_at=st.integers(0, 2**64 - 1),
    package_id=st.integers(0, 2**64 - 1),
)


@settings(max_examples=200, deadline=None)
@given(m=manifests)
def test_any_valid_manifest_round_trips(m: Manifest) -> None:
    """Every constructible manifest encodes and decodes to itself."""
    assert Manifest.decode(m.encode()) == m


@settings(max_examples=300, deadline=None)
@given(m=manifests, position=st.integers(0), value=st.integers(0, 255), cut=st.booleans())
def test_corrupted_manifests_only_raise_protocol_errors(m, position, value, cut) -> None:
    """A changed or truncated signed manifest is refused with a reason, never accepted."""
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    cose = bytearray(sign_manifest(m, key))
    position %= len(cose)
    if cut:
        del cose[position:]
    elif cose[position] == value:
        return
    else:
        cose[position] = value
    with pytest.raises(ProtocolError):
        verify_manifest(
            bytes(cose),
            trusted_keys=trusted_key_set(key.public_key()),
            current_sequence=0,
            hardware_profile="cortex-m4",
            now=0,
        )


@settings(max_examples=300, deadline=None)
@given(
    payload=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**64), 2**64)
        | st.binary(max_size=40)
        | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 30), inner, max_size=16)
        ),
        max_leaves=30,
    )
)
def test_arbitrary_signed_payloads_only_raise_protocol_errors(payload: Any) -> None:
    """Even a trusted signer's garbage is refused with a reason, never a crash."""
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    cose = sign1(cbor2.dumps(payload), key, key_id(key.public_key()))
    try:
        verify_manifest(
            cose,
            trusted_keys=trusted_key_set(key.public_key()),
            current_sequence=0,
            hardware_profile="cortex-m4",
            now=0,
        )
    except ProtocolError:
        pass
