"""The SDK's trust state is bounded as the C firmware's is (firmware/LINK.md, "Bounded memory"):
at most 2 keys learnt by rotation, none ever evicted; the ids of the 4 most recently retired
rotated keys remembered, the oldest forgotten first; a retired enrolled key never forgotten;
a forgotten key back only through a new record signed by a key trusted now."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.protocol.cose import key_id
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.trust import (
    MAX_RETIRED_KIDS,
    MAX_ROTATED_KEYS,
    TrustPolicy,
    TrustState,
    encode_trust_bundle,
    rotation_for,
    sign_policy,
    sign_rotation,
    trusted_key_set,
)

ENROLLED = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([0x40 + i]) * 32) for i in range(60)]


def kid(key: Ed25519PrivateKey) -> bytes:
    return key_id(key.public_key())


def enrolled_state() -> TrustState:
    """A device that enrolled trusting ENROLLED only."""
    return TrustState(trusted_key_set(ENROLLED.public_key()))


def refused(state: TrustState, record: bytes) -> Reason:
    with pytest.raises(ProtocolError) as exc:
        state.apply(record)
    return exc.value.reason


def test_a_trusted_key_cannot_grow_the_trusted_keys_past_two_rotated_ones() -> None:
    """A leaked enrolled key signing rotation after rotation (nothing retired): the first two
    are trusted, every later one refused, and the list keeps the keys it had (no eviction)."""
    state = enrolled_state()
    assert state.enrolled == (kid(ENROLLED),)
    records = [sign_rotation(rotation_for(k.public_key(), sequence=n), ENROLLED)
               for n, k in enumerate(KEYS[:50], start=1)]
    state, errors = state.apply_bundle(encode_trust_bundle(records))
    assert list(state.keys) == [kid(ENROLLED), kid(KEYS[0]), kid(KEYS[1])]
    assert len(errors) == 48
    assert {e.reason for e in errors} == {Reason.MANIFEST_BAD_ROTATION}
    assert state.sequence == MAX_ROTATED_KEYS
    assert state.rotated() == [kid(KEYS[0]), kid(KEYS[1])]


def test_a_full_rotated_list_takes_a_key_only_from_a_record_that_retires_one_of_them() -> None:
    state = enrolled_state()
    for n in (1, 2):
        state = state.apply(sign_rotation(rotation_for(KEYS[n].public_key(), sequence=n),
                                          ENROLLED))
    # Retiring the enrolled key frees no rotated slot (the firmware's rule too).
    third = KEYS[3].public_key()
    assert refused(state, sign_rotation(rotation_for(third, sequence=3,
                                                     retire_kid=kid(ENROLLED)), ENROLLED)) \
        == Reason.MANIFEST_BAD_ROTATION
    # A rotation retiring its signer (a rotated key) replaces it.
    state = state.apply(sign_rotation(rotation_for(third, sequence=3, retire_kid=kid(KEYS[1])),
                                      KEYS[1]))
    assert state.rotated() == [kid(KEYS[2]), kid(KEYS[3])]
    # So does a policy that retires one first.
    state = state.apply(sign_policy(TrustPolicy(4, retire_kids=(kid(KEYS[2]),)), KEYS[3]))
    state = state.apply(sign_rotation(rotation_for(KEYS[4].public_key(), sequence=5), KEYS[3]))
    assert list(state.keys) == [kid(ENROLLED), kid(KEYS[3]), kid(KEYS[4])]
    assert state.retired == (kid(KEYS[1]), kid(KEYS[2]))


def long_lived() -> tuple[TrustState, list[bytes]]:
    """A device whose enrolled key was retired, then ten rotations, each retiring its signer
    (the key the previous one brought). Returns the state and the records, in order."""
    records = [sign_rotation(rotation_for(KEYS[0].public_key(), sequence=1), ENROLLED),
               sign_policy(TrustPolicy(2, retire_kids=(kid(ENROLLED),)), KEYS[0])]
    for n in range(1, 11):
        records.append(sign_rotation(rotation_for(KEYS[n].public_key(), sequence=n + 2,
                                                  retire_kid=kid(KEYS[n - 1])), KEYS[n - 1]))
    state = enrolled_state()
    for record in records:
        state = state.apply(record)
    return state, records


def test_only_the_newest_retired_rotated_ids_are_kept_and_an_enrolled_one_forever() -> None:
    state, _ = long_lived()
    assert list(state.keys) == [kid(KEYS[10])]
    # KEYS[0..9] were retired in that order: the oldest six are forgotten.
    assert state.retired == (kid(ENROLLED), *(kid(KEYS[n]) for n in range(6, 10)))
    assert len(state.retired) == 1 + MAX_RETIRED_KIDS
    # Still refused: the enrolled key and the remembered rotated ones.
    for n, key in enumerate((ENROLLED, KEYS[6], KEYS[9]), start=13):
        assert refused(state, sign_rotation(rotation_for(key.public_key(), sequence=n),
                                            KEYS[10])) == Reason.MANIFEST_BAD_ROTATION


def test_a_forgotten_key_returns_only_through_a_new_record() -> None:
    state, records = long_lived()
    # No old record brings it back: not the one that first brought KEYS[1] (its signer is
    # retired), nor any in the retained bundle (replays, skipped by sequence).
    assert refused(state, records[2]) == Reason.MANIFEST_BAD_ROTATION
    assert state.apply_bundle(encode_trust_bundle(records)) == (state, [])
    # A new record signed by the key trusted now may bring the forgotten key back.
    back = state.apply(sign_rotation(rotation_for(KEYS[1].public_key(), sequence=13), KEYS[10]))
    assert list(back.keys) == [kid(KEYS[10]), kid(KEYS[1])]


def test_a_state_kept_before_enrolled_keys_were_recorded_counts_its_keys_as_enrolled() -> None:
    """A device upgraded with three trusted keys and a retired one: none is evicted or
    forgotten, and it may learn two more by rotation."""
    keys = trusted_key_set(*(k.public_key() for k in KEYS[:3]))
    state = TrustState(keys, sequence=7, retired=(kid(ENROLLED),))
    assert state.enrolled == (*keys, kid(ENROLLED)) and state.rotated() == []
    for n in (8, 9):
        state = state.apply(sign_rotation(rotation_for(KEYS[n].public_key(), sequence=n),
                                          KEYS[0]))
    assert refused(state, sign_rotation(rotation_for(KEYS[10].public_key(), sequence=10),
                                        KEYS[0])) == Reason.MANIFEST_BAD_ROTATION
    assert kid(ENROLLED) in state.retired
