"""Encode, sign and verify OTA manifests (trust records: :mod:`device_sdk.protocol.trust`).

A manifest travels as COSE_Sign1 (see :mod:`device_sdk.protocol.cose`) whose payload is a
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
    key_id,
    loads_strict,
    sign1,
    verify_sign1,
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

_TEXT, _DIGEST, _U32, FIELD_U64, _ENCODING = "text", "digest", "u32", "u64", "encoding"
_TRIAL = "trial"
_MANIFEST_FIELDS: dict[int, tuple[str, str]] = {
    K_SEQUENCE: ("sequence", FIELD_U64),
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
    K_EXPIRES_AT: ("expires_at", FIELD_U64),
    K_PACKAGE_ID: ("package_id", FIELD_U64),
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


def field_problem(kind: str, value: object) -> str | None:
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


def decode_map(payload: bytes, allowed: set[int]) -> dict[int, Any]:
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
            problem = field_problem(kind, value)
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
        item = decode_map(payload, set(_MANIFEST_FIELDS))
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
