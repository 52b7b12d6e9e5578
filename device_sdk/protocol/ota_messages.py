"""Encode and decode the OTA transfer messages: chunk requests, chunks and progress reports.

Wire forms (CDDL in ``CDDL.md``), each a CBOR array:

    chunk-request = [pkg, offset, length]     ; fleet/v1/{uid}/ota/get, device -> server
    chunk         = [pkg, offset, data]       ; fleet/v1/{uid}/ota/chunk, server -> device
    report        = [pkg, state, detail]      ; fleet/v1/{uid}/ota/report, device -> server
    withdraw      = [pkg, reason]             ; fleet/v1/{uid}/ota/withdraw, server -> device
    fanout-key    = [pkg, key: bstr .size 16] ; fleet/v1/{uid}/ota/key, server -> device

A withdrawal tells a device to stop package ``pkg`` (its rollout was aborted or rolled back):
a device downloading it drops the download and reports FAILED with ``reason`` (ABORTED); one
running it on trial reverts and reports ROLLED_BACK with ``reason``; a device that never heard
of ``pkg``, or already confirmed it, ignores it. It is unsigned, as offers' transport is: the
broker's ACL lets only the server publish it, and it can only stop an update, never start one.
The durable, signed form of a withdrawal is a policy record on ``fleet/v1/keys`` (manifest.py)
revoking the package or raising the fleet's minimum sequence.

The package fan-out (``fleet/v1/pkg/{pkg}/c``, server -> every device of a wave) carries the
same three items without the array's header and the byte string's::

    fanout-chunk  = pkg: uint, offset: uint, data: the rest of the payload

i.e. two CBOR unsigned integers followed by the raw bytes. A wave receives every fan-out
chunk once per device, so its framing is most of a rollout's wire overhead: this form is 4
bytes shorter per chunk (the array header, 1, and the byte string's length, 3 for a 2 KB
chunk). Its first byte is a CBOR uint (major type 0, below 0x1c), never the array's 0x83, so
:func:`decode_chunk` reads both forms: a gateway or device decoding whatever arrives on either
chunk topic needs no other call. Firmware never sees the fan-out form (the serial gateway
answers an MCU's requests with the array form from its cache).

The offer on ``ota/offer`` is the raw COSE_Sign1 manifest: ``manifest.py`` owns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import cbor2

from device_sdk.protocol.limits import (
    MAX_CHUNK_BYTES,
    MAX_CHUNK_MSG_BYTES,
    MAX_CHUNK_REQUEST_BYTES,
    MAX_PACKAGE_ID,
    MAX_REASON_CODE,
    MAX_REPORT_BYTES,
    MAX_TRANSFER_BYTES,
    MAX_WITHDRAW_BYTES,
    coerce_uint,
    loads_bounded,
    wire_array,
    wire_bytes,
    wire_uint,
)
from device_sdk.protocol.reasons import ProtocolError, Reason

__all__ = [
    "Chunk",
    "ChunkRequest",
    "DeploymentState",
    "FanoutKey",
    "Report",
    "Withdrawal",
    "decode_chunk",
    "decode_chunk_request",
    "decode_fanout_key",
    "decode_report",
    "decode_withdrawal",
    "encode_chunk",
    "encode_chunk_request",
    "encode_fanout_chunk",
    "encode_fanout_key",
    "encode_report",
    "encode_withdrawal",
]


class DeploymentState(IntEnum):
    """Per-device deployment states (docs/ARCHITECTURE.md, the path of an update). Wire values: never renumber.

    The server alone sets PENDING and OFFERED; a device reports the others.
    """

    PENDING = 0
    OFFERED = 1
    DOWNLOADING = 2
    VERIFIED = 3
    INSTALLED = 4
    TRIAL = 5
    CONFIRMED = 6
    FAILED = 7
    ROLLED_BACK = 8


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """Ask for ``length`` bytes of package ``pkg``'s transfer stream from ``offset`` on."""

    pkg: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """Carry bytes of a package's transfer stream (none when asked for bytes past its end)."""

    pkg: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Report:
    """Tell the server where a device is in a deployment, and why when it failed."""

    pkg: int
    state: DeploymentState
    detail: int = 0  # a Reason code, 0 when there is nothing to explain

    @property
    def reason(self) -> Reason | None:
        """Return ``detail`` as a Reason, or None for a code this build does not know."""
        try:
            return Reason(self.detail)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """Tell a device to stop package ``pkg`` (abort or rollback); ``reason`` is a Reason code."""

    pkg: int
    reason: int = 35  # Reason.ABORTED


def encode_withdrawal(withdrawal: Withdrawal) -> bytes:
    """Encode a withdrawal ``[pkg, reason]``."""
    pkg = coerce_uint(withdrawal.pkg, "pkg", MAX_PACKAGE_ID)
    reason = coerce_uint(withdrawal.reason, "reason", MAX_REASON_CODE)
    return cbor2.dumps([pkg, reason])


def decode_withdrawal(payload: bytes) -> Withdrawal:
    """Decode a withdrawal; raise ProtocolError and nothing else on refusal."""
    items = wire_array(loads_bounded(payload, cap=MAX_WITHDRAW_BYTES), "withdraw", length=2)
    return Withdrawal(wire_uint(items[0], "pkg", MAX_PACKAGE_ID),
                      wire_uint(items[1], "reason", MAX_REASON_CODE))


@dataclass(frozen=True, slots=True)
class FanoutKey:
    """The key that decrypts package ``pkg``'s fan-out (``fanout.py``), sent before its offer."""

    pkg: int
    key: bytes


def encode_fanout_key(message: FanoutKey) -> bytes:
    """Encode ``[pkg, key]``."""
    pkg = coerce_uint(message.pkg, "pkg", MAX_PACKAGE_ID)
    if not isinstance(message.key, bytes) or len(message.key) != 16:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "key: expected 16 bytes")
    return cbor2.dumps([pkg, message.key])


def decode_fanout_key(payload: bytes) -> FanoutKey:
    """Decode a fan-out key message; raise ProtocolError and nothing else on refusal."""
    items = wire_array(loads_bounded(payload, cap=MAX_WITHDRAW_BYTES), "fanout key", length=2)
    pkg = wire_uint(items[0], "pkg", MAX_PACKAGE_ID)
    key = wire_bytes(items[1], "key", 16)
    if len(key) != 16:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "key: expected 16 bytes")
    return FanoutKey(pkg, key)


def encode_chunk_request(request: ChunkRequest) -> bytes:
    """Encode a chunk request of 1..MAX_CHUNK_BYTES bytes."""
    pkg = coerce_uint(request.pkg, "pkg", MAX_PACKAGE_ID)
    offset = coerce_uint(request.offset, "offset", MAX_TRANSFER_BYTES)
    length = coerce_uint(request.length, "length", MAX_CHUNK_BYTES, minimum=1)
    _check_span(offset, length)
    return cbor2.dumps([pkg, offset, length])


def decode_chunk_request(payload: bytes) -> ChunkRequest:
    """Decode a chunk request; raise ProtocolError and nothing else on refusal."""
    items = _load(payload, MAX_CHUNK_REQUEST_BYTES, "chunk request")
    pkg = wire_uint(items[0], "pkg", MAX_PACKAGE_ID)
    offset = wire_uint(items[1], "offset", MAX_TRANSFER_BYTES)
    length = wire_uint(items[2], "length", MAX_CHUNK_BYTES, minimum=1)
    _check_span(offset, length)
    return ChunkRequest(pkg, offset, length)


def _checked_chunk(chunk: Chunk) -> tuple[int, int, bytes]:
    """Return a chunk's (pkg, offset, data) once every field is in range for the wire."""
    pkg = coerce_uint(chunk.pkg, "pkg", MAX_PACKAGE_ID)
    offset = coerce_uint(chunk.offset, "offset", MAX_TRANSFER_BYTES)
    if not isinstance(chunk.data, bytes | bytearray | memoryview):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "data: expected bytes")
    data = wire_bytes(bytes(chunk.data), "data", MAX_CHUNK_BYTES)
    _check_span(offset, len(data))
    return pkg, offset, data


def encode_chunk(chunk: Chunk) -> bytes:
    """Encode a chunk of at most MAX_CHUNK_BYTES data bytes."""
    return cbor2.dumps(list(_checked_chunk(chunk)))


def encode_fanout_chunk(chunk: Chunk) -> bytes:
    """Encode a chunk in the package fan-out's form: CBOR uints ``pkg`` and ``offset``, then
    the data bytes as they are."""
    pkg, offset, data = _checked_chunk(chunk)
    return cbor2.dumps(pkg) + cbor2.dumps(offset) + data


def decode_chunk(payload: bytes) -> Chunk:
    """Decode a chunk, in the array form or the fan-out's; raise ProtocolError and nothing
    else on refusal."""
    if isinstance(payload, bytes | bytearray | memoryview) and len(payload) \
            and payload[0] < 0x1C:
        return _decode_fanout_chunk(bytes(payload))
    items = _load(payload, MAX_CHUNK_MSG_BYTES, "chunk")
    pkg = wire_uint(items[0], "pkg", MAX_PACKAGE_ID)
    offset = wire_uint(items[1], "offset", MAX_TRANSFER_BYTES)
    data = wire_bytes(items[2], "data", MAX_CHUNK_BYTES)
    _check_span(offset, len(data))
    return Chunk(pkg, offset, data)


def _decode_fanout_chunk(payload: bytes) -> Chunk:
    """Decode ``pkg: uint, offset: uint, data...`` (the first byte is known to be a uint's)."""
    if len(payload) > MAX_CHUNK_MSG_BYTES:
        raise ProtocolError(Reason.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes > {MAX_CHUNK_MSG_BYTES}")
    pkg, at = _uint_at(payload, 0, "pkg")
    offset, at = _uint_at(payload, at, "offset")
    data = payload[at:]
    pkg = wire_uint(pkg, "pkg", MAX_PACKAGE_ID)
    offset = wire_uint(offset, "offset", MAX_TRANSFER_BYTES)
    data = wire_bytes(data, "data", MAX_CHUNK_BYTES)
    _check_span(offset, len(data))
    return Chunk(pkg, offset, data)


_UINT_WIDTH = {24: 1, 25: 2, 26: 4, 27: 8}  # CBOR additional information -> argument bytes


def _uint_at(payload: bytes, at: int, field: str) -> tuple[int, int]:
    """Read the CBOR unsigned integer at ``at``; return (value, where the next item starts)."""
    if at >= len(payload):
        raise ProtocolError(Reason.CBOR_MALFORMED, f"{field}: truncated")
    head = payload[at]
    if head >> 5 != 0:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"{field}: expected uint")
    info = head & 0x1F
    if info < 24:
        return info, at + 1
    width = _UINT_WIDTH.get(info)
    if width is None:
        raise ProtocolError(Reason.CBOR_MALFORMED, f"{field}: reserved length {info}")
    end = at + 1 + width
    if end > len(payload):
        raise ProtocolError(Reason.CBOR_MALFORMED, f"{field}: truncated")
    return int.from_bytes(payload[at + 1:end], "big"), end


def encode_report(report: Report) -> bytes:
    """Encode a deployment report."""
    pkg = coerce_uint(report.pkg, "pkg", MAX_PACKAGE_ID)
    state = coerce_uint(report.state, "state", max(DeploymentState))
    detail = coerce_uint(report.detail, "detail", MAX_REASON_CODE)
    return cbor2.dumps([pkg, state, detail])


def decode_report(payload: bytes) -> Report:
    """Decode a deployment report; keep detail codes this build does not know.

    Newer firmware may report a reason this server has no name for yet: refusing the report
    would lose the state change, so the code is kept and shown as ``UNKNOWN_<n>``.
    """
    items = _load(payload, MAX_REPORT_BYTES, "report")
    pkg = wire_uint(items[0], "pkg", MAX_PACKAGE_ID)
    state = DeploymentState(wire_uint(items[1], "state", max(DeploymentState)))
    detail = wire_uint(items[2], "detail", MAX_REASON_CODE)
    return Report(pkg, state, detail)


def _load(payload: bytes, cap: int, what: str) -> Sequence[object]:
    return wire_array(loads_bounded(payload, cap=cap), what, length=3)


def _check_span(offset: int, length: int) -> None:
    if offset + length > MAX_TRANSFER_BYTES:
        raise ProtocolError(
            Reason.VALUE_OUT_OF_RANGE, f"offset + length > {MAX_TRANSFER_BYTES} bytes"
        )
