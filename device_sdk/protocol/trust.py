"""Signing-key rotation and trust policy records, and the retained trust bundle.

Each record travels as COSE_Sign1 (:mod:`device_sdk.protocol.cose`) whose payload is a
deterministically encoded CBOR map with integer keys, as manifests are
(:mod:`device_sdk.protocol.manifest`; keys 1 and 2 shared). Wire values: never renumber. CDDL::

    rotation = {
        1 => 1,            ; format version
        2 => uint,         ; rotation sequence, a counter of its own (not the manifests')
        20 => bstr .size 8,   ; key id of the new key (cose.key_id of key 21)
        21 => bstr .size 32,  ; the new Ed25519 public key, raw
        ? 22 => bstr,      ; key id of a key to stop trusting (often the signer's own)
    }
    policy = {             ; a signed trust policy: retire keys, raise the floor, revoke
        1 => 1,            ; format version
        2 => uint,         ; sequence: the same counter as rotation records (one chain)
        ? 30 => [1*8 bstr .size 8],  ; key ids to retire
        ? 31 => uint,      ; the fleet's minimum manifest sequence: refuse any at or below it
        ? 32 => [1*16 uint],  ; package ids (key 14) revoked: refuse them, stop them
    }                      ; at least one of 30, 31, 32
    trust-bundle = [* bstr]  ; fleet/v1/keys, retained: rotation and policy records
                             ; (each a COSE_Sign1), ascending sequence, at most 64

The key sets overlap only in 1 and 2, so no payload decodes as two kinds of record.

Trust rules (a device applies rotation and policy records in sequence order, one counter):

- A record is signed by a key the device trusts now; a new key never vouches for itself.
- Keys are ordered by when the device came to trust them (enrollment order, then rotation
  order). A record may retire its own signer or keys older than it, never a newer key: a
  compromised old key cannot lock the fleet out of the key that replaced it. The last trusted
  key is never retired.
- A retired key never returns: the device remembers retired key ids and refuses a rotation
  that introduces one (MANIFEST_BAD_ROTATION), and a manifest signed by one is
  MANIFEST_UNKNOWN_KEY.
- Bounded memory, as the C firmware's (firmware/LINK.md): besides the keys it enrolled with
  (the firmware's built-in keys, whose retirement is never forgotten), a device trusts at most
  MAX_ROTATED_KEYS (2) keys learnt by rotation. A rotation that would need a third is refused
  (MANIFEST_BAD_ROTATION) unless the same record retires one of them: no key is evicted, so an
  old key cannot push out its replacement. Of retired rotated keys the device remembers the ids
  of the MAX_RETIRED_KIDS (4) most recently retired; an older one is forgotten, and then only a
  new record signed by a key trusted now can bring it back (replays stay refused by sequence).
- Key 31 only ever raises the device's sequence floor (an offer at or below it is
  MANIFEST_SEQUENCE_REPLAY); key 32 adds to the revoked packages the device keeps (the newest
  16): an offer of one is refused with ABORTED, and a download or trial of one in progress
  stops (the trial reverts, reported ROLLED_BACK).
- A record at or below the device's record sequence is a replay (MANIFEST_SEQUENCE_REPLAY).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device_sdk.protocol.cose import (
    KEY_ID_BYTES,
    check_algorithm,
    key_id,
    loads_strict,
    parse_sign1,
    raw_public_key,
    sign1,
    verify_signature,
)
from device_sdk.protocol.limits import MAX_TRUST_BUNDLE_BYTES, MAX_TRUST_RECORDS
from device_sdk.protocol.manifest import (
    FIELD_U64,
    FORMAT_VERSION,
    K_SEQUENCE,
    K_VERSION,
    decode_map,
    field_problem,
)
from device_sdk.protocol.reasons import ProtocolError, Reason

# Rotation keys beyond 1 and 2. Wire values: never renumber.
K_NEW_KID, K_NEW_PUBLIC_KEY, K_RETIRE_KID = 20, 21, 22
# Policy keys beyond 1 and 2. Wire values: never renumber.
K_RETIRE_KIDS, K_MIN_SEQUENCE, K_REVOKE_PACKAGES = 30, 31, 32
MAX_RETIRE_KIDS = 8
MAX_REVOKED_PACKAGES = 16
# The firmware's TML_MAX_ROTATED_KEYS and TML_MAX_RETIRED_KIDS (firmware/include/tml/config.h).
MAX_ROTATED_KEYS = 2
MAX_RETIRED_KIDS = 4


_ROTATION_FIELDS = {K_SEQUENCE, K_NEW_KID, K_NEW_PUBLIC_KEY, K_RETIRE_KID}


@dataclass(frozen=True)
class KeyRotation:
    """A record, signed by a trusted key, that makes devices trust ``new_public_key``."""

    sequence: int
    new_public_key: bytes  # raw 32 bytes
    retire_kid: bytes | None = None
    format_version: int = FORMAT_VERSION

    @property
    def new_kid(self) -> bytes:
        """Return the key id of the introduced key."""
        return key_id(self.public_key())

    def public_key(self) -> Ed25519PublicKey:
        """Return the introduced key, raising MANIFEST_BAD_ROTATION if it is not a valid one."""
        try:
            return Ed25519PublicKey.from_public_bytes(self.new_public_key)
        except ValueError:
            raise ProtocolError(Reason.MANIFEST_BAD_ROTATION, "not an Ed25519 key") from None

    def encode(self) -> bytes:
        """Return the deterministic CBOR payload."""
        item: dict[int, Any] = {
            K_VERSION: self.format_version,
            K_SEQUENCE: self.sequence,
            K_NEW_KID: self.new_kid,
            K_NEW_PUBLIC_KEY: self.new_public_key,
        }
        if self.retire_kid is not None:
            item[K_RETIRE_KID] = self.retire_kid
        return cbor2.dumps(item, canonical=True)

    @classmethod
    def decode(cls, payload: bytes) -> KeyRotation:
        """Parse a payload, raising MANIFEST_MALFORMED, _UNSUPPORTED_VERSION or _BAD_ROTATION."""
        item = decode_map(payload, _ROTATION_FIELDS)
        if not {K_VERSION, K_SEQUENCE, K_NEW_KID, K_NEW_PUBLIC_KEY} <= set(item):
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "rotation keys 2, 20 or 21 missing")
        sequence, new_kid, new_key = item[K_SEQUENCE], item[K_NEW_KID], item[K_NEW_PUBLIC_KEY]
        retire = item.get(K_RETIRE_KID)
        if field_problem(FIELD_U64, sequence):
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "rotation sequence not a uint")
        if not isinstance(new_kid, bytes) or len(new_kid) != KEY_ID_BYTES:
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "new kid not a bstr of 8 bytes")
        if not isinstance(new_key, bytes) or len(new_key) != 32:
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "new key not a bstr of 32 bytes")
        if retire is not None and (not isinstance(retire, bytes) or not 1 <= len(retire) <= 32):
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "retired kid not a bstr of 1..32")
        rotation = cls(sequence=sequence, new_public_key=new_key, retire_kid=retire)
        if rotation.new_kid != new_kid:
            raise ProtocolError(Reason.MANIFEST_BAD_ROTATION, "new kid is not the new key's id")
        return rotation

    def apply(
        self, trusted_keys: Mapping[bytes, Ed25519PublicKey], *, signer: bytes | None = None,
        retired: Collection[bytes] = (),
    ) -> dict[bytes, Ed25519PublicKey]:
        """Return the key set after this rotation, refusing one that makes no sense for it.

        ``signer`` (the record's kid) is checked against the retirement rule when given;
        ``retired`` are the key ids the device retired before, which never return.
        """
        new_kid = self.new_kid
        if new_kid in trusted_keys:
            raise ProtocolError(Reason.MANIFEST_BAD_ROTATION, "the new key is already trusted")
        if new_kid in retired:
            raise ProtocolError(Reason.MANIFEST_BAD_ROTATION, "a retired key never returns")
        if self.retire_kid is not None and self.retire_kid not in trusted_keys:
            raise ProtocolError(Reason.MANIFEST_BAD_ROTATION, "the retired key is not trusted")
        if self.retire_kid is not None and signer is not None:
            check_retirement(signer, [self.retire_kid], trusted_keys, replacement=True)
        keys = dict(trusted_keys)
        keys[new_kid] = self.public_key()
        if self.retire_kid is not None:
            del keys[self.retire_kid]
        return keys


def sign_rotation(rotation: KeyRotation, private_key: Ed25519PrivateKey) -> bytes:
    """Return ``rotation`` as a COSE_Sign1 message signed by ``private_key`` (an old key)."""
    return sign1(rotation.encode(), private_key, key_id(private_key.public_key()))


def verify_rotation(
    cose_bytes: bytes,
    *,
    trusted_keys: Mapping[bytes, Ed25519PublicKey],
    current_sequence: int,
    retired: Collection[bytes] = (),
) -> KeyRotation:
    """Check a signed rotation record against the keys a device trusts and return it.

    In order: structure (MANIFEST_MALFORMED), algorithm (MANIFEST_BAD_ALGORITHM), signer among
    ``trusted_keys`` (MANIFEST_BAD_ROTATION: a new or unknown key cannot vouch for itself),
    signature (MANIFEST_BAD_SIGNATURE), payload (MANIFEST_MALFORMED, _UNSUPPORTED_VERSION),
    sequence above ``current_sequence`` (MANIFEST_SEQUENCE_REPLAY), then consistency of the new
    and retired key ids with ``trusted_keys`` and ``retired`` (MANIFEST_BAD_ROTATION: a key
    may retire itself or older keys only, and a retired key never returns).
    """
    kid, payload = _verified_record(cose_bytes, trusted_keys)
    rotation = KeyRotation.decode(payload)
    if rotation.sequence <= current_sequence:
        raise ProtocolError(
            Reason.MANIFEST_SEQUENCE_REPLAY,
            f"rotation sequence {rotation.sequence}, device is at {current_sequence}",
        )
    # raises if the record does not fit these keys
    rotation.apply(trusted_keys, signer=kid, retired=retired)
    return rotation


def _verified_record(
    cose_bytes: bytes, trusted_keys: Mapping[bytes, Ed25519PublicKey]
) -> tuple[bytes, bytes]:
    """Check a record's envelope, signer and signature; return (signer kid, payload)."""
    message = parse_sign1(cose_bytes)
    check_algorithm(message.protected)
    signer = trusted_keys.get(message.kid)
    if signer is None:
        raise ProtocolError(
            Reason.MANIFEST_BAD_ROTATION, f"signed by kid {message.kid.hex()}, which is not trusted"
        )
    verify_signature(message, signer)
    return message.kid, message.payload


def check_retirement(signer: bytes, retire: Collection[bytes],
                     trusted_keys: Mapping[bytes, Ed25519PublicKey], *,
                     replacement: bool = False) -> None:
    """Refuse (MANIFEST_BAD_ROTATION) retiring a key newer than ``signer``, an untrusted key,
    or the last trusted key (``replacement``: a rotation brings one more key, so it may retire
    the only one). ``trusted_keys`` is in the order the device came to trust them."""
    order = list(trusted_keys)
    for kid in retire:
        if kid not in trusted_keys:
            raise ProtocolError(Reason.MANIFEST_BAD_ROTATION, f"kid {kid.hex()} is not trusted")
        if order.index(kid) > order.index(signer):
            raise ProtocolError(Reason.MANIFEST_BAD_ROTATION,
                                f"kid {signer.hex()} cannot retire the newer kid {kid.hex()}")
    if not replacement and not set(trusted_keys) - set(retire):
        raise ProtocolError(Reason.MANIFEST_BAD_ROTATION, "would retire every trusted key")


def apply_rotation(
    cose_bytes: bytes,
    trusted_keys: Mapping[bytes, Ed25519PublicKey],
    *,
    current_sequence: int,
) -> dict[bytes, Ed25519PublicKey]:
    """Verify a rotation record and return the new trusted key set (the input is not changed).

    A device persists the returned keys together with the record's sequence, which
    :func:`verify_rotation` returns when the caller needs it.
    """
    rotation = verify_rotation(
        cose_bytes, trusted_keys=trusted_keys, current_sequence=current_sequence
    )
    return rotation.apply(trusted_keys)


def trusted_key_set(*public_keys: Ed25519PublicKey) -> dict[bytes, Ed25519PublicKey]:
    """Return ``{key_id: key}`` for the given keys, as devices store them."""
    return {key_id(k): k for k in public_keys}


def rotation_for(
    new_key: Ed25519PublicKey, *, sequence: int, retire_kid: bytes | None = None
) -> KeyRotation:
    """Return a rotation record introducing ``new_key``."""
    return KeyRotation(sequence, raw_public_key(new_key), retire_kid)


_POLICY_FIELDS = {K_SEQUENCE, K_RETIRE_KIDS, K_MIN_SEQUENCE, K_REVOKE_PACKAGES}


@dataclass(frozen=True)
class TrustPolicy:
    """A signed record that retires keys, raises the minimum sequence or revokes packages."""

    sequence: int
    retire_kids: tuple[bytes, ...] = ()
    min_sequence: int | None = None
    revoke_packages: tuple[int, ...] = ()
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "retire_kids", tuple(self.retire_kids))
        object.__setattr__(self, "revoke_packages", tuple(self.revoke_packages))
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Return what makes this record unfit for the wire, or None."""
        if field_problem(FIELD_U64, self.sequence):
            return "sequence: not a uint"
        if not (self.retire_kids or self.min_sequence is not None or self.revoke_packages):
            return "a policy retires, raises the minimum or revokes something"
        if len(self.retire_kids) > MAX_RETIRE_KIDS or not all(
                isinstance(k, bytes) and len(k) == KEY_ID_BYTES for k in self.retire_kids):
            return f"retire_kids: at most {MAX_RETIRE_KIDS} bstr of {KEY_ID_BYTES} bytes"
        if self.min_sequence is not None and field_problem(FIELD_U64, self.min_sequence):
            return "min_sequence: not a uint"
        if len(self.revoke_packages) > MAX_REVOKED_PACKAGES or any(
                field_problem(FIELD_U64, p) for p in self.revoke_packages):
            return f"revoke_packages: at most {MAX_REVOKED_PACKAGES} uints"
        return None

    def encode(self) -> bytes:
        """Return the deterministic CBOR payload."""
        item: dict[int, Any] = {K_VERSION: self.format_version, K_SEQUENCE: self.sequence}
        if self.retire_kids:
            item[K_RETIRE_KIDS] = list(self.retire_kids)
        if self.min_sequence is not None:
            item[K_MIN_SEQUENCE] = self.min_sequence
        if self.revoke_packages:
            item[K_REVOKE_PACKAGES] = list(self.revoke_packages)
        return cbor2.dumps(item, canonical=True)

    @classmethod
    def decode(cls, payload: bytes) -> TrustPolicy:
        """Parse a payload, raising MANIFEST_MALFORMED or MANIFEST_UNSUPPORTED_VERSION."""
        item = decode_map(payload, _POLICY_FIELDS)
        if K_SEQUENCE not in item:
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "policy key 2 missing")
        retire, revoke = item.get(K_RETIRE_KIDS, []), item.get(K_REVOKE_PACKAGES, [])
        if not isinstance(retire, list) or (K_RETIRE_KIDS in item and not retire) \
                or not isinstance(revoke, list) or (K_REVOKE_PACKAGES in item and not revoke):
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "policy keys 30 and 32 are non-empty arrays")
        try:
            return cls(item[K_SEQUENCE], tuple(retire), item.get(K_MIN_SEQUENCE), tuple(revoke))
        except (ValueError, TypeError) as exc:
            raise ProtocolError(Reason.MANIFEST_MALFORMED, str(exc)) from None


def sign_policy(policy: TrustPolicy, private_key: Ed25519PrivateKey) -> bytes:
    """Return ``policy`` as a COSE_Sign1 message signed by ``private_key`` (a trusted key)."""
    return sign1(policy.encode(), private_key, key_id(private_key.public_key()))


@dataclass(frozen=True)
class TrustState:
    """What a device persists of the trust chain; the result of applying records in order.

    ``keys`` is ordered by when the device came to trust each key (the retirement rule needs
    it); ``enrolled`` are the ids of the keys it was given at enrollment (None: the keys and
    retired ids it starts with, for a state persisted before they were kept); the other keys
    were learnt by rotation, at most MAX_ROTATED_KEYS. ``retired`` is in the order of
    retirement: retired enrolled keys, and the newest MAX_RETIRED_KIDS retired rotated keys.
    ``revoked`` keeps the newest MAX_REVOKED_PACKAGES package ids.
    """

    keys: Mapping[bytes, Ed25519PublicKey]
    sequence: int = 0  # the record sequence reached (rotations and policies share it)
    retired: tuple[bytes, ...] = ()
    min_sequence: int = 0
    revoked: tuple[int, ...] = ()
    enrolled: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        if self.enrolled is None:
            object.__setattr__(self, "enrolled", tuple(self.keys) + tuple(self.retired))
        else:
            object.__setattr__(self, "enrolled", tuple(self.enrolled))

    def rotated(self) -> list[bytes]:
        """Return the ids of the trusted keys learnt by rotation, oldest first."""
        return [kid for kid in self.keys if kid not in (self.enrolled or ())]

    def _retire(self, kids: Collection[bytes]) -> tuple[bytes, ...]:
        """Return ``retired`` with ``kids`` added, forgetting the oldest retired rotated ids
        past MAX_RETIRED_KIDS (a retired enrolled key is never forgotten)."""
        retired = tuple(dict.fromkeys(self.retired + tuple(kids)))
        enrolled = set(self.enrolled or ())
        rotated = [kid for kid in retired if kid not in enrolled]
        forget = set(rotated[:max(0, len(rotated) - MAX_RETIRED_KIDS)])
        return tuple(kid for kid in retired if kid not in forget)

    def apply(self, cose_bytes: bytes) -> TrustState:
        """Verify one rotation or policy record against this state; return the state after it.

        Raises ``ProtocolError`` as :func:`verify_rotation` does, for either kind of record.
        """
        from dataclasses import replace

        kid, payload = _verified_record(cose_bytes, self.keys)
        record = decode_trust_record(payload)
        if record.sequence <= self.sequence:
            raise ProtocolError(
                Reason.MANIFEST_SEQUENCE_REPLAY,
                f"record sequence {record.sequence}, device is at {self.sequence}",
            )
        if isinstance(record, KeyRotation):
            keys = record.apply(self.keys, signer=kid, retired=self.retired)
            rotated = self.rotated()
            if len(rotated) >= MAX_ROTATED_KEYS and record.retire_kid not in rotated:
                raise ProtocolError(
                    Reason.MANIFEST_BAD_ROTATION,
                    f"already {len(rotated)} rotated keys and the record retires none of them")
            gone = () if record.retire_kid is None else (record.retire_kid,)
            return replace(self, keys=keys, sequence=record.sequence, retired=self._retire(gone))
        check_retirement(kid, record.retire_kids, self.keys)
        keys = {k: v for k, v in self.keys.items() if k not in record.retire_kids}
        revoked = tuple(dict.fromkeys(self.revoked + record.revoke_packages))
        return replace(
            self, keys=keys, sequence=record.sequence, retired=self._retire(record.retire_kids),
            min_sequence=max(self.min_sequence, record.min_sequence or 0),
            revoked=revoked[-MAX_REVOKED_PACKAGES:],
        )

    def apply_bundle(self, bundle: bytes) -> tuple[TrustState, list[ProtocolError]]:
        """Apply every record of a trust bundle newer than this state, in order.

        A record at or below the state's sequence is skipped silently (already applied, or
        older than the keys the device enrolled with); a record that fails its checks changes
        nothing and is returned among the errors; the others still apply.
        """
        state, errors = self, []
        for record in decode_trust_bundle(bundle):
            try:
                # Skipping needs no signature (it changes nothing): a record already applied
                # may be signed by a key retired since.
                if decode_trust_record(parse_sign1(record).payload).sequence <= state.sequence:
                    continue
                state = state.apply(record)
            except ProtocolError as exc:
                if exc.reason != Reason.MANIFEST_SEQUENCE_REPLAY:
                    errors.append(exc)
        return state, errors


def decode_trust_record(payload: bytes) -> KeyRotation | TrustPolicy:
    """Parse a rotation or a policy payload (told apart by key 20)."""
    try:
        item = loads_strict(payload)
    except (ValueError, cbor2.CBORError, RecursionError) as exc:
        raise ProtocolError(Reason.MANIFEST_MALFORMED, f"payload not CBOR: {exc}") from None
    if isinstance(item, Mapping) and K_NEW_KID in item:
        return KeyRotation.decode(payload)
    return TrustPolicy.decode(payload)


def encode_trust_bundle(records: list[bytes]) -> bytes:
    """Return the retained ``fleet/v1/keys`` payload: a CBOR array of COSE_Sign1 records."""

    if len(records) > MAX_TRUST_RECORDS:
        raise ValueError(f"at most {MAX_TRUST_RECORDS} trust records")
    out = cbor2.dumps([bytes(r) for r in records])
    if len(out) > MAX_TRUST_BUNDLE_BYTES:
        raise ValueError(f"trust bundle of {len(out)} bytes > {MAX_TRUST_BUNDLE_BYTES}")
    return out


def decode_trust_bundle(payload: bytes) -> list[bytes]:
    """Parse a trust bundle into its records (not yet verified), raising MANIFEST_MALFORMED."""

    if len(payload) > MAX_TRUST_BUNDLE_BYTES:
        raise ProtocolError(Reason.MANIFEST_MALFORMED, "trust bundle too large")
    try:
        item = loads_strict(payload)
    except (ValueError, cbor2.CBORError, RecursionError) as exc:
        raise ProtocolError(Reason.MANIFEST_MALFORMED, f"bundle not CBOR: {exc}") from None
    if not isinstance(item, list) or len(item) > MAX_TRUST_RECORDS or not all(
            isinstance(r, bytes) for r in item):
        raise ProtocolError(Reason.MANIFEST_MALFORMED, "bundle is not an array of bstr")
    return list(item)
