"""Encode and decode the OTA transfer messages: chunk requests, chunks and progress reports.

Wire forms (CDDL in ``CDDL.md``), each a CBOR array:

    chunk-request = [pkg, offset, length]     ; fleet/v1/{uid}/ota/get, device -> server
    chunk         = [pkg, offset, data]       ; fleet/v1/{uid}/ota/chunk or fleet/v1/pkg/{pkg}/chunk
    report        = [pkg, state, detail]      ; fleet/v1/{uid}/ota/report, device -> server

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
    "Report",
    "decode_chunk",
    "decode_chunk_request",
    "decode_report",
    "encode_chunk",
    "encode_chunk_request",
    "encode_report",
]


class DeploymentState(IntEnum):
    """Per-device deployment states (DESIGN.md "Rollouts"). Wire values: never renumber.

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


def encode_chunk(chunk: Chunk) -> bytes:
    """Encode a chunk of at most MAX_CHUNK_BYTES data bytes."""
    pkg = coerce_uint(chunk.pkg, "pkg", MAX_PACKAGE_ID)
    offset = coerce_uint(chunk.offset, "offset", MAX_TRANSFER_BYTES)
    if not isinstance(chunk.data, bytes | bytearray | memoryview):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "data: expected bytes")
    data = wire_bytes(bytes(chunk.data), "data", MAX_CHUNK_BYTES)
    _check_span(offset, len(data))
    return cbor2.dumps([pkg, offset, data])


def decode_chunk(payload: bytes) -> Chunk:
    """Decode a chunk; raise ProtocolError and nothing else on refusal."""
    items = _load(payload, MAX_CHUNK_MSG_BYTES, "chunk")
    pkg = wire_uint(items[0], "pkg", MAX_PACKAGE_ID)
    offset = wire_uint(items[1], "offset", MAX_TRANSFER_BYTES)
    data = wire_bytes(items[2], "data", MAX_CHUNK_BYTES)
    _check_span(offset, len(data))
    return Chunk(pkg, offset, data)


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
