"""Encode and decode the retained device status on ``fleet/v1/{uid}/status``.

The status is a CBOR map with text keys (CDDL in ``CDDL.md``). The capability keys are
spelled exactly as at enrollment (the README's Enrollment section), so :func:`parse_capabilities`
checks the enrollment JSON and the status map alike. The capability keys travel as a group:
all six or none. An online status carries the presence fields (slot, uptime, free RAM, manifest
sequence) and, on the first status of each MQTT connection, the capabilities; later statuses on
the same connection (after a model switch, say) leave them out, which means "unchanged since my
last status that carried them": they change only with the firmware, that is across a reboot and
so a reconnect. The broker's last will is the offline status alone, ``{"state": 0}`` (8 bytes).
Readers ignore text keys they do not know, so newer firmware can add fields within v1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import cbor2

from device_sdk.protocol.limits import (
    MAX_MEMORY_BYTES,
    MAX_MODEL_ID,
    MAX_OP_NAME,
    MAX_OPS,
    MAX_STATUS_BYTES,
    MAX_STATUS_KEYS,
    MAX_UINT63,
    MAX_VERSION_TEXT,
    coerce_int,
    loads_bounded,
    wire_array,
    wire_text,
    wire_uint,
)
from device_sdk.protocol.reasons import ProtocolError, Reason

__all__ = [
    "CAPABILITY_KEYS",
    "OFFLINE_PAYLOAD",
    "Capabilities",
    "LinkState",
    "Status",
    "decode_status",
    "encode_status",
    "parse_capabilities",
]

# The op names as TFLite spells them; the same pattern enrollment applies.
_OP_NAME: Final = re.compile(rf"[A-Z][A-Z0-9_]{{0,{MAX_OP_NAME - 1}}}")
_POINTER_BITS: Final = (32, 64)
KEY_ID_BYTES: Final = 8  # cose.KEY_ID_BYTES
MAX_TRUSTED_KEYS: Final = 16

# Wire keys: never rename. Capability keys match the enrollment JSON field names.
CAPABILITY_KEYS: Final = (
    "firmware_version",
    "tflm_version",
    "ops",
    "arena_bytes",
    "slot_bytes",
    "pointer_bits",
)
_ONLINE_REQUIRED: Final = ("slot", "uptime_s", "free_ram", "seq")


class LinkState(IntEnum):
    """Say whether the device is connected. Wire values: never renumber."""

    OFFLINE = 0
    ONLINE = 1


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the firmware can run: its versions, registered ops and memory budget."""

    firmware_version: str
    tflm_version: str
    ops: list[str]  # op names the resolver registers, as TFLite spells them (CONV_2D, ...)
    arena_bytes: int  # tensor arena compiled into the firmware
    slot_bytes: int  # size of one model slot
    pointer_bits: int  # 32 on a Cortex-M, 64 on a host build


@dataclass(frozen=True, slots=True)
class Status:
    """A device's state as it publishes it, retained by the broker.

    Online, every field but ``model`` and ``capabilities`` is required (``model`` is None when
    no model runs; ``capabilities`` is None when unchanged since the device's last status that
    carried them, which the first status of every connection does). Offline, every field but
    ``state`` is optional: the last will carries only the state.
    """

    state: LinkState
    model: int | None = None  # model version id of the running model
    slot: int | None = None  # 0 or 1: the slot the running model was loaded from
    uptime_s: int | None = None
    free_ram: int | None = None  # bytes
    seq: int | None = None  # sequence of the manifest installed (anti-rollback)
    capabilities: Capabilities | None = None  # None: unchanged (see above)
    keys: tuple[bytes, ...] | None = None  # ids of the signing keys trusted; None: unknown


def parse_capabilities(fields: Mapping[str, object]) -> Capabilities:
    """Check the six capability fields of a status map or an enrollment request.

    A missing or mistyped field is SCHEMA_MISMATCH; a value outside its bounds (empty or
    overlong text, an op name TFLite would not spell so, pointer bits other than 32 or 64) is
    VALUE_OUT_OF_RANGE. Other keys of ``fields`` are ignored.
    """
    missing = [key for key in CAPABILITY_KEYS if key not in fields]
    if missing:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"capabilities: missing {', '.join(missing)}")
    ops = [
        wire_text(op, "ops", MAX_OP_NAME, min_length=1)
        for op in wire_array(fields["ops"], "ops", max_length=MAX_OPS)
    ]
    bad = [op for op in ops if not _OP_NAME.fullmatch(op)]
    if bad:
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"ops: not TFLite op names: {bad[:3]}")
    pointer_bits = wire_uint(fields["pointer_bits"], "pointer_bits", max(_POINTER_BITS))
    if pointer_bits not in _POINTER_BITS:
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"pointer_bits: {pointer_bits}")
    return Capabilities(
        firmware_version=wire_text(
            fields["firmware_version"], "firmware_version", MAX_VERSION_TEXT, min_length=1
        ),
        tflm_version=wire_text(fields["tflm_version"], "tflm_version", MAX_VERSION_TEXT),
        ops=ops,
        arena_bytes=wire_uint(fields["arena_bytes"], "arena_bytes", MAX_MEMORY_BYTES),
        slot_bytes=wire_uint(fields["slot_bytes"], "slot_bytes", MAX_MEMORY_BYTES),
        pointer_bits=pointer_bits,
    )


def encode_status(status: Status) -> bytes:
    """Encode a status as deterministic CBOR, refusing what :func:`decode_status` would refuse."""
    fields: dict[str, object] = {"state": coerce_int(status.state, "state")}
    for key in ("model", *_ONLINE_REQUIRED):
        value = getattr(status, key)
        if value is not None:
            fields[key] = coerce_int(value, key)
    if status.keys is not None:
        fields["keys"] = [bytes(kid) for kid in status.keys]
    caps = status.capabilities
    if caps is not None:
        fields.update(
            firmware_version=caps.firmware_version,
            tflm_version=caps.tflm_version,
            ops=list(caps.ops),
            arena_bytes=coerce_int(caps.arena_bytes, "arena_bytes"),
            slot_bytes=coerce_int(caps.slot_bytes, "slot_bytes"),
            pointer_bits=coerce_int(caps.pointer_bits, "pointer_bits"),
        )
    # One set of checks for both directions: what we send is exactly what we accept.
    _status_from(fields)
    # Canonical (RFC 8949 length-first) key order makes the bytes reproducible for test vectors.
    return cbor2.dumps(fields, canonical=True)


def decode_status(payload: bytes) -> Status:
    """Decode a status payload; raise ProtocolError and nothing else on refusal."""
    value = loads_bounded(payload, cap=MAX_STATUS_BYTES)
    if not isinstance(value, dict):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "status: expected map")
    if len(value) > MAX_STATUS_KEYS:
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"status: {len(value)} keys")
    if not all(isinstance(key, str) for key in value):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "status: keys must be text")
    return _status_from(value)


def _status_from(fields: Mapping[str, object]) -> Status:
    if "state" not in fields:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "status: missing state")
    state = LinkState(wire_uint(fields["state"], "state", max(LinkState)))
    model = fields.get("model")
    if model is not None:
        model = wire_uint(model, "model", MAX_MODEL_ID)
    slot = _optional_uint(fields, "slot", 1)
    uptime_s = _optional_uint(fields, "uptime_s", MAX_UINT63)
    free_ram = _optional_uint(fields, "free_ram", MAX_UINT63)
    seq = _optional_uint(fields, "seq", MAX_UINT63)
    caps = _optional_capabilities(fields)
    keys = _optional_keys(fields)
    if state is LinkState.ONLINE:
        missing = [key for key in _ONLINE_REQUIRED if key not in fields]
        if missing:
            raise ProtocolError(Reason.SCHEMA_MISMATCH, f"online status: missing {missing}")
    return Status(state, model, slot, uptime_s, free_ram, seq, caps, keys)


def _optional_keys(fields: Mapping[str, object]) -> tuple[bytes, ...] | None:
    # Absent: unknown (older firmware). Present: the key ids the device trusts, 8 bytes each.
    if "keys" not in fields:
        return None
    kids = wire_array(fields["keys"], "keys", max_length=MAX_TRUSTED_KEYS)
    out = []
    for kid in kids:
        if not isinstance(kid, bytes) or len(kid) != KEY_ID_BYTES:
            raise ProtocolError(Reason.SCHEMA_MISMATCH, "keys: each a bstr of 8 bytes")
        out.append(kid)
    return tuple(out)


def _optional_capabilities(fields: Mapping[str, object]) -> Capabilities | None:
    # All six keys or none: a partial set is a truncated or confused writer, never "unchanged".
    present = [key for key in CAPABILITY_KEYS if key in fields]
    if not present:
        return None
    if len(present) < len(CAPABILITY_KEYS):
        missing = [key for key in CAPABILITY_KEYS if key not in fields]
        raise ProtocolError(
            Reason.SCHEMA_MISMATCH,
            f"status: capabilities are all six keys or none; missing {', '.join(missing)}",
        )
    return parse_capabilities(fields)


def _optional_uint(fields: Mapping[str, object], key: str, maximum: int) -> int | None:
    # Absent means unknown; an explicit null is refused like any other wrong type.
    return wire_uint(fields[key], key, maximum) if key in fields else None


OFFLINE_PAYLOAD: Final = encode_status(Status(LinkState.OFFLINE))
"""The last will a device registers when it connects: ``{"state": 0}``."""
