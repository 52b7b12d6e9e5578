"""Encode, sign and verify OTA manifests and signing-key rotation records.

Both travel as COSE_Sign1 (see :mod:`device_sdk.protocol.cose`) whose payload is a
deterministically encoded CBOR map (RFC 8949 section 4.2.1: shortest integer heads,
definite lengths, keys ascending) with integer keys. Wire values: never renumber. CDDL::

    manifest = {
        1 => 1,            ; format version
        2 => uint,         ; sequence: a device accepts only a higher one (anti-rollback)
        3 => tstr,         ; model name, 1..64 UTF-8 bytes (as are 4 and 5)
        4 => tstr,         ; model version
        5 => tstr,         ; hardware profile name
        6 => bstr .size 32,  ; SHA-256 of the installed model bytes
        7 => uint,         ; installed model size (< 2^32, as are 10 and 12)
        8 => 0 / 1 / 2,    ; encoding: raw, compressed, delta (TRANSFER.md)
        9 => bstr .size 32,  ; SHA-256 of the transferred bytes
        10 => uint,        ; transfer size
        ? 11 => bstr .size 32,  ; SHA-256 of the delta's base model: present iff encoding 2
        12 => uint,        ; tensor arena bytes the model needs
        13 => uint,        ; expiry, unix seconds: refused from this second on
        14 => uint,        ; package id, named in chunk requests
        ? 15 => trial,     ; golden-input trial; absent: the legacy trial (load and run)
    }
    trial = [
        n: 1..8,           ; golden inputs 0..n-1 (limits.MAX_TRIAL_INPUTS)
        labels: [+ uint],  ; n expected top-1 labels, each < limits.MAX_LABELS
        outputs_sha256: bstr .size 32 / null,  ; digest of the n raw outputs; null: not checked
        max_label_mismatches: uint,  ; 0..n inputs whose label may differ
        output_type: 0 / 1,  ; output tensor 0 read as 0 int8 (signed), 1 uint8 (unsigned)
    ]
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
- Key 31 only ever raises the device's sequence floor (an offer at or below it is
  MANIFEST_SEQUENCE_REPLAY); key 32 adds to the revoked packages the device keeps (the newest
  16): an offer of one is refused with ABORTED, and a download or trial of one in progress
  stops (the trial reverts, reported ROLLED_BACK).
- A record at or below the device's record sequence is a replay (MANIFEST_SEQUENCE_REPLAY).

Key 15 (the trial) follows :mod:`device_sdk.protocol.golden`: the device runs golden inputs
0..n-1 derived from key 6 through the installed model and passes when its top-1 labels differ
from ``labels`` in at most ``max_label_mismatches`` inputs and, when ``outputs_sha256`` is not
null, the SHA-256 of its raw outputs equals it (the server sets it only when it measured the
outputs with the profile's kernel set). A mismatch reverts with TRIAL_OUTPUT_MISMATCH. A raw (encoding 0)
manifest must repeat the model's size and digest as its transfer size and digest.

Checks run in the order of :func:`verify_manifest`'s docstring. The COSE envelope is checked
before the signature and the payload only after it, so a tampered payload is always
MANIFEST_BAD_SIGNATURE and no unauthenticated field is ever interpreted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import IntEnum
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
    verify_sign1,
    verify_signature,
)
from device_sdk.protocol.golden import OutputType
from device_sdk.protocol.limits import MAX_LABELS, MAX_TRIAL_INPUTS
from device_sdk.protocol.reasons import ProtocolError, Reason

FORMAT_VERSION = 1
MAX_TEXT_BYTES = 64
DIGEST_BYTES = 32
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF


class Encoding(IntEnum):
    """How a package's model bytes travel. Wire values: never renumber."""

    RAW = 0
    COMPRESSED = 1
    DELTA = 2


# Payload keys. Wire values: never renumber.
K_VERSION = 1
K_SEQUENCE = 2
K_MODEL_NAME = 3
K_MODEL_VERSION = 4
K_HARDWARE = 5
K_MODEL_SHA256 = 6
K_MODEL_SIZE = 7
K_ENCODING = 8
K_TRANSFER_SHA256 = 9
K_TRANSFER_SIZE = 10
K_BASE_SHA256 = 11
K_ARENA_BYTES = 12
K_EXPIRES_AT = 13
K_PACKAGE_ID = 14
K_TRIAL = 15
# Rotation keys beyond 1 and 2. Wire values: never renumber.
K_NEW_KID, K_NEW_PUBLIC_KEY, K_RETIRE_KID = 20, 21, 22
# Policy keys beyond 1 and 2. Wire values: never renumber. (KP_, not K_: the firmware's
# protocol.h mirrors every K_ constant, and its C side of policy records is still to come;
# tests/firmware/test_contract.py will take these in once it mirrors them as TML_K_*.)
KP_RETIRE_KIDS, KP_MIN_SEQUENCE, KP_REVOKE_PACKAGES = 30, 31, 32
MAX_RETIRE_KIDS = 8
MAX_REVOKED_PACKAGES = 16

_TEXT, _DIGEST, _U32, _U64, _ENCODING = "text", "digest", "u32", "u64", "encoding"
_TRIAL = "trial"
_MANIFEST_FIELDS: dict[int, tuple[str, str]] = {
    K_SEQUENCE: ("sequence", _U64),
    K_MODEL_NAME: ("model_name", _TEXT),
    K_MODEL_VERSION: ("model_version", _TEXT),
    K_HARDWARE: ("hardware_profile", _TEXT),
    K_MODEL_SHA256: ("model_sha256", _DIGEST),
    K_MODEL_SIZE: ("model_size", _U32),
    K_ENCODING: ("encoding", _ENCODING),
    K_TRANSFER_SHA256: ("transfer_sha256", _DIGEST),
    K_TRANSFER_SIZE: ("transfer_size", _U32),
    K_BASE_SHA256: ("base_sha256", _DIGEST),
    K_ARENA_BYTES: ("arena_bytes", _U32),
    K_EXPIRES_AT: ("expires_at", _U64),
    K_PACKAGE_ID: ("package_id", _U64),
    K_TRIAL: ("trial", _TRIAL),
}
_OPTIONAL = {K_BASE_SHA256, K_TRIAL}


@dataclass(frozen=True)
class TrialSpec:
    """What a device's golden-input trial must see (manifest key 15), per golden.py's rule."""

    labels: tuple[int, ...]
    max_label_mismatches: int = 0
    outputs_sha256: bytes | None = None
    output_type: OutputType = OutputType.INT8

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        problem = self.problem()
        if problem:
            raise ValueError(problem)
        object.__setattr__(self, "output_type", OutputType(self.output_type))

    @property
    def n(self) -> int:
        """Return how many golden inputs the trial runs."""
        return len(self.labels)

    def problem(self) -> str | None:
        """Return what makes this trial unfit for the wire, or None."""
        if not 1 <= len(self.labels) <= MAX_TRIAL_INPUTS:
            return f"trial: 1..{MAX_TRIAL_INPUTS} labels, not {len(self.labels)}"
        if not all(type(v) is int and 0 <= v < MAX_LABELS for v in self.labels):
            return f"trial: labels are uints below {MAX_LABELS}"
        m = self.max_label_mismatches
        if type(m) is not int or not 0 <= m <= len(self.labels):
            return "trial: max_label_mismatches is a uint no larger than n"
        digest = self.outputs_sha256
        if digest is not None and (not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES):
            return f"trial: outputs_sha256 is null or a bstr of {DIGEST_BYTES} bytes"
        kind = self.output_type
        if type(kind) not in (int, OutputType) or kind not in set(OutputType):
            return "trial: output_type is 0 (int8) or 1 (uint8)"
        return None

    def to_wire(self) -> list[Any]:
        """Return the CBOR array ``[n, labels, outputs_sha256 / null, max, output_type]``."""
        return [self.n, list(self.labels), self.outputs_sha256, self.max_label_mismatches,
                int(self.output_type)]

    @classmethod
    def from_wire(cls, item: Any) -> TrialSpec:
        """Parse key 15's value, raising ValueError for any deviation from the CDDL."""
        if not isinstance(item, list) or len(item) != 5:
            raise ValueError("trial: not an array of 5")
        n, labels, digest, mismatches, kind = item
        if type(n) is not int or not isinstance(labels, list) or len(labels) != n:
            raise ValueError("trial: n is not the number of labels")
        if type(kind) is not int:
            raise ValueError("trial: output_type is not a uint")
        return cls(tuple(labels), mismatches, digest, kind)  # type: ignore[arg-type]


def _problem(kind: str, value: object) -> str | None:
    """Return why ``value`` is not of wire type ``kind``, or None if it is."""
    if kind == _TEXT:
        if not isinstance(value, str):
            return "not a tstr"
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "not valid UTF-8"
        return None if 1 <= size <= MAX_TEXT_BYTES else f"not 1..{MAX_TEXT_BYTES} UTF-8 bytes"
    if kind == _ENCODING:
        known = isinstance(value, int) and not isinstance(value, bool) and value in set(Encoding)
        return None if known else "not a known encoding"
    if kind == _DIGEST:
        ok = isinstance(value, bytes) and len(value) == DIGEST_BYTES
        return None if ok else f"not a bstr of {DIGEST_BYTES} bytes"
    if kind == _TRIAL:
        return None if isinstance(value, TrialSpec) else "not a TrialSpec"
    limit = U32 if kind == _U32 else U64
    # type() rather than isinstance(): bool is an int subclass and must not pass.
    ok = type(value) is int and 0 <= value <= limit
    return None if ok else f"not a uint below 2^{32 if kind == _U32 else 64}"


def _decode_map(payload: bytes, allowed: set[int]) -> dict[int, Any]:
    """Decode a deterministically encoded CBOR map with integer keys from ``allowed``.

    Raises MANIFEST_MALFORMED, or MANIFEST_UNSUPPORTED_VERSION when key 1 is not 1.
    """
    try:
        item = loads_strict(payload)
    except (ValueError, cbor2.CBORError, RecursionError) as exc:
        raise ProtocolError(Reason.MANIFEST_MALFORMED, f"payload not CBOR: {exc}") from None
    if not isinstance(item, Mapping) or not all(type(k) is int for k in item):
        raise ProtocolError(Reason.MANIFEST_MALFORMED, "payload is not a map with integer keys")
    version = item.get(K_VERSION)
    if type(version) is not int:
        raise ProtocolError(Reason.MANIFEST_MALFORMED, "format version missing or not a uint")
    if version != FORMAT_VERSION:
        raise ProtocolError(Reason.MANIFEST_UNSUPPORTED_VERSION, f"format version {version}")
    try:
        canonical = cbor2.dumps(item, canonical=True)
    except (ValueError, TypeError, cbor2.CBORError):
        canonical = b""
    if canonical != payload:
        raise ProtocolError(Reason.MANIFEST_MALFORMED, "payload is not deterministically encoded")
    unknown = set(item) - allowed - {K_VERSION}
    if unknown:
        raise ProtocolError(Reason.MANIFEST_MALFORMED, f"unknown keys {sorted(unknown)}")
    return item


@dataclass(frozen=True)
class Manifest:
    """The signed description of one OTA package (the payload of the COSE_Sign1)."""

    sequence: int
    model_name: str
    model_version: str
    hardware_profile: str
    model_sha256: bytes
    model_size: int
    encoding: Encoding
    transfer_sha256: bytes
    transfer_size: int
    arena_bytes: int
    expires_at: int
    package_id: int
    base_sha256: bytes | None = None
    format_version: int = FORMAT_VERSION
    trial: TrialSpec | None = None

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(problem)
        object.__setattr__(self, "encoding", Encoding(self.encoding))

    def problem(self) -> str | None:
        """Return what makes this manifest unfit for the wire, or None."""
        if self.format_version != FORMAT_VERSION:
            return f"format version {self.format_version}"
        for name, kind in _MANIFEST_FIELDS.values():
            value = getattr(self, name)
            if name in ("base_sha256", "trial") and value is None:
                continue
            problem = _problem(kind, value)
            if problem:
                return f"{name}: {problem}"
        if (self.encoding == Encoding.DELTA) != (self.base_sha256 is not None):
            return "base_sha256 is required for a delta and only for a delta"
        if self.encoding == Encoding.RAW and (
            self.transfer_size != self.model_size or self.transfer_sha256 != self.model_sha256
        ):
            return "a raw transfer must be the model itself"
        return None

    def encode(self) -> bytes:
        """Return the deterministic CBOR payload."""
        item: dict[int, Any] = {K_VERSION: self.format_version}
        for key, (name, _kind) in _MANIFEST_FIELDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if name == "trial":
                item[key] = value.to_wire()
            else:
                item[key] = int(value) if name == "encoding" else value
        return cbor2.dumps(item, canonical=True)

    @classmethod
    def decode(cls, payload: bytes) -> Manifest:
        """Parse a payload, raising MANIFEST_MALFORMED or MANIFEST_UNSUPPORTED_VERSION."""
        item = _decode_map(payload, set(_MANIFEST_FIELDS))
        missing = set(_MANIFEST_FIELDS) - _OPTIONAL - set(item)
        if missing:
            raise ProtocolError(Reason.MANIFEST_MALFORMED, f"keys {sorted(missing)} missing")
        try:
            fields = {name: item[k] for k, (name, _) in _MANIFEST_FIELDS.items() if k in item}
            if K_TRIAL in item:
                fields["trial"] = TrialSpec.from_wire(item[K_TRIAL])
            return cls(**fields)
        except ValueError as exc:
            raise ProtocolError(Reason.MANIFEST_MALFORMED, str(exc)) from None


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> bytes:
    """Return ``manifest`` as a COSE_Sign1 message signed by ``private_key``."""
    return sign1(manifest.encode(), private_key, key_id(private_key.public_key()))


def verify_manifest(
    cose_bytes: bytes,
    *,
    trusted_keys: Mapping[bytes, Ed25519PublicKey],
    current_sequence: int,
    hardware_profile: str,
    now: int,
    slot_bytes: int | None = None,
    arena_bytes: int | None = None,
    running_model_sha256: bytes | None = None,
    revoked_packages: Collection[int] = (),
) -> Manifest:
    """Check a signed manifest as a device does and return it, or raise ``ProtocolError``.

    In order: envelope structure (MANIFEST_MALFORMED), algorithm (MANIFEST_BAD_ALGORITHM),
    key id (MANIFEST_UNKNOWN_KEY), signature (MANIFEST_BAD_SIGNATURE), format version
    (MANIFEST_UNSUPPORTED_VERSION), payload fields (MANIFEST_MALFORMED), sequence above
    ``current_sequence`` (MANIFEST_SEQUENCE_REPLAY), ``now`` before expiry (MANIFEST_EXPIRED),
    hardware profile (MANIFEST_WRONG_HARDWARE), model size within ``slot_bytes``
    (MANIFEST_TOO_LARGE), arena within ``arena_bytes`` (MANIFEST_ARENA_TOO_SMALL), and for a
    delta, base digest equal to ``running_model_sha256`` (DELTA_BASE_MISMATCH). A limit given
    as None is not checked; the transfer decoder checks a delta's base again as it reads it.
    Right after the sequence, a package among ``revoked_packages`` (policy key 32) is ABORTED.
    """
    _kid, payload = verify_sign1(cose_bytes, trusted_keys)
    manifest = Manifest.decode(payload)
    if manifest.sequence <= current_sequence:
        raise ProtocolError(
            Reason.MANIFEST_SEQUENCE_REPLAY,
            f"sequence {manifest.sequence}, device is at {current_sequence}",
        )
    if manifest.package_id in revoked_packages:
        raise ProtocolError(Reason.ABORTED, f"package {manifest.package_id} was revoked")
    if now >= manifest.expires_at:
        raise ProtocolError(Reason.MANIFEST_EXPIRED, f"expired at {manifest.expires_at}")
    if manifest.hardware_profile != hardware_profile:
        raise ProtocolError(
            Reason.MANIFEST_WRONG_HARDWARE,
            f"for {manifest.hardware_profile!r}, device is {hardware_profile!r}",
        )
    if slot_bytes is not None and manifest.model_size > slot_bytes:
        raise ProtocolError(
            Reason.MANIFEST_TOO_LARGE, f"{manifest.model_size} bytes, slot is {slot_bytes}"
        )
    if arena_bytes is not None and manifest.arena_bytes > arena_bytes:
        raise ProtocolError(
            Reason.MANIFEST_ARENA_TOO_SMALL,
            f"needs {manifest.arena_bytes} arena bytes, firmware has {arena_bytes}",
        )
    if (
        manifest.encoding == Encoding.DELTA
        and running_model_sha256 is not None
        and manifest.base_sha256 != running_model_sha256
    ):
        raise ProtocolError(Reason.DELTA_BASE_MISMATCH, "delta is not against the running model")
    return manifest


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
        item = _decode_map(payload, _ROTATION_FIELDS)
        if not {K_VERSION, K_SEQUENCE, K_NEW_KID, K_NEW_PUBLIC_KEY} <= set(item):
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "rotation keys 2, 20 or 21 missing")
        sequence, new_kid, new_key = item[K_SEQUENCE], item[K_NEW_KID], item[K_NEW_PUBLIC_KEY]
        retire = item.get(K_RETIRE_KID)
        if _problem(_U64, sequence):
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


_POLICY_FIELDS = {K_SEQUENCE, KP_RETIRE_KIDS, KP_MIN_SEQUENCE, KP_REVOKE_PACKAGES}


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
        if _problem(_U64, self.sequence):
            return "sequence: not a uint"
        if not (self.retire_kids or self.min_sequence is not None or self.revoke_packages):
            return "a policy retires, raises the minimum or revokes something"
        if len(self.retire_kids) > MAX_RETIRE_KIDS or not all(
                isinstance(k, bytes) and len(k) == KEY_ID_BYTES for k in self.retire_kids):
            return f"retire_kids: at most {MAX_RETIRE_KIDS} bstr of {KEY_ID_BYTES} bytes"
        if self.min_sequence is not None and _problem(_U64, self.min_sequence):
            return "min_sequence: not a uint"
        if len(self.revoke_packages) > MAX_REVOKED_PACKAGES or any(
                _problem(_U64, p) for p in self.revoke_packages):
            return f"revoke_packages: at most {MAX_REVOKED_PACKAGES} uints"
        return None

    def encode(self) -> bytes:
        """Return the deterministic CBOR payload."""
        item: dict[int, Any] = {K_VERSION: self.format_version, K_SEQUENCE: self.sequence}
        if self.retire_kids:
            item[KP_RETIRE_KIDS] = list(self.retire_kids)
        if self.min_sequence is not None:
            item[KP_MIN_SEQUENCE] = self.min_sequence
        if self.revoke_packages:
            item[KP_REVOKE_PACKAGES] = list(self.revoke_packages)
        return cbor2.dumps(item, canonical=True)

    @classmethod
    def decode(cls, payload: bytes) -> TrustPolicy:
        """Parse a payload, raising MANIFEST_MALFORMED or MANIFEST_UNSUPPORTED_VERSION."""
        item = _decode_map(payload, _POLICY_FIELDS)
        if K_SEQUENCE not in item:
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "policy key 2 missing")
        retire, revoke = item.get(KP_RETIRE_KIDS, []), item.get(KP_REVOKE_PACKAGES, [])
        if not isinstance(retire, list) or (KP_RETIRE_KIDS in item and not retire) \
                or not isinstance(revoke, list) or (KP_REVOKE_PACKAGES in item and not revoke):
            raise ProtocolError(Reason.MANIFEST_MALFORMED, "policy keys 30 and 32 are non-empty arrays")
        try:
            return cls(item[K_SEQUENCE], tuple(retire), item.get(KP_MIN_SEQUENCE), tuple(revoke))
        except (ValueError, TypeError) as exc:
            raise ProtocolError(Reason.MANIFEST_MALFORMED, str(exc)) from None


def sign_policy(policy: TrustPolicy, private_key: Ed25519PrivateKey) -> bytes:
    """Return ``policy`` as a COSE_Sign1 message signed by ``private_key`` (a trusted key)."""
    return sign1(policy.encode(), private_key, key_id(private_key.public_key()))


@dataclass(frozen=True)
class TrustState:
    """What a device persists of the trust chain; the result of applying records in order.

    ``keys`` is ordered by when the device came to trust each key (the retirement rule needs
    it); ``retired`` only grows; ``revoked`` keeps the newest MAX_REVOKED_PACKAGES package ids.
    """

    keys: Mapping[bytes, Ed25519PublicKey]
    sequence: int = 0  # the record sequence reached (rotations and policies share it)
    retired: tuple[bytes, ...] = ()
    min_sequence: int = 0
    revoked: tuple[int, ...] = ()

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
            gone = () if record.retire_kid is None else (record.retire_kid,)
            return replace(self, keys=keys, sequence=record.sequence,
                           retired=self.retired + gone)
        check_retirement(kid, record.retire_kids, self.keys)
        keys = {k: v for k, v in self.keys.items() if k not in record.retire_kids}
        revoked = tuple(dict.fromkeys(self.revoked + record.revoke_packages))
        return replace(
            self, keys=keys, sequence=record.sequence,
            retired=self.retired + tuple(k for k in record.retire_kids if k not in self.retired),
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
    from device_sdk.protocol.limits import MAX_TRUST_BUNDLE_BYTES, MAX_TRUST_RECORDS

    if len(records) > MAX_TRUST_RECORDS:
        raise ValueError(f"at most {MAX_TRUST_RECORDS} trust records")
    out = cbor2.dumps([bytes(r) for r in records])
    if len(out) > MAX_TRUST_BUNDLE_BYTES:
        raise ValueError(f"trust bundle of {len(out)} bytes > {MAX_TRUST_BUNDLE_BYTES}")
    return out


def decode_trust_bundle(payload: bytes) -> list[bytes]:
    """Parse a trust bundle into its records (not yet verified), raising MANIFEST_MALFORMED."""
    from device_sdk.protocol.limits import MAX_TRUST_BUNDLE_BYTES, MAX_TRUST_RECORDS

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
