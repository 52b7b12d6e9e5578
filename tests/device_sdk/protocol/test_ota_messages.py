"""OTA transfer messages: chunk requests, chunks and reports, byte for byte and every refusal."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.protocol.limits import (
    MAX_CHUNK_BYTES,
    MAX_CHUNK_MSG_BYTES,
    MAX_PACKAGE_ID,
    MAX_TRANSFER_BYTES,
)
from device_sdk.protocol.ota_messages import (
    Chunk,
    ChunkRequest,
    DeploymentState,
    Report,
    decode_chunk,
    decode_chunk_request,
    decode_report,
    encode_chunk,
    encode_chunk_request,
    encode_fanout_chunk,
    encode_report,
)
from device_sdk.protocol.reasons import ProtocolError, Reason

Decoder = Callable[[bytes], object]


def test_deployment_state_wire_values() -> None:
    """Wire values follow the order of states in docs/ARCHITECTURE.md: never renumber."""
    assert [s.name.lower() for s in sorted(DeploymentState)] == [
        "pending",
        "offered",
        "downloading",
        "verified",
        "installed",
        "trial",
        "confirmed",
        "failed",
        "rolled_back",
    ]
    assert [int(s) for s in sorted(DeploymentState)] == list(range(9))


def test_golden_bytes() -> None:
    """Each message is a 3-array of plain CBOR items."""
    assert encode_chunk_request(ChunkRequest(14, 4096, 1024)) == bytes.fromhex("830e1910001904 00")
    assert encode_chunk(Chunk(14, 0, b"\x01\x02")) == bytes.fromhex("830e00420102")
    assert encode_report(Report(14, DeploymentState.FAILED, Reason.TRANSFER_DIGEST_MISMATCH)) == (
        bytes.fromhex("830e0716")
    )


@settings(max_examples=100, deadline=None)
@given(
    pkg=st.integers(0, MAX_PACKAGE_ID),
    offset=st.integers(0, MAX_TRANSFER_BYTES - MAX_CHUNK_BYTES),
    length=st.integers(1, MAX_CHUNK_BYTES),
    data=st.binary(max_size=512),
    state=st.sampled_from(DeploymentState),
    detail=st.integers(0, 0xFFFF),
)
def test_messages_round_trip(
    pkg: int, offset: int, length: int, data: bytes, state: DeploymentState, detail: int
) -> None:
    """Every message the encoders accept decodes to an equal message."""
    request = ChunkRequest(pkg, offset, length)
    assert decode_chunk_request(encode_chunk_request(request)) == request
    chunk = Chunk(pkg, offset, data)
    assert decode_chunk(encode_chunk(chunk)) == chunk
    report = Report(pkg, state, detail)
    assert decode_report(encode_report(report)) == report


def test_fanout_chunk_golden_bytes_and_both_forms_decode() -> None:
    """The fan-out form is the array's items without the array and byte-string headers: two
    CBOR uints, then the data; decode_chunk tells the forms apart by their first byte."""
    assert encode_fanout_chunk(Chunk(14, 0, b"\x01\x02")) == bytes.fromhex("0e000102")
    assert encode_fanout_chunk(Chunk(300, 65536, b"")) == bytes.fromhex("19012c1a00010000")
    data = bytes(range(256)) * 8  # a 2 KB chunk: 4 bytes shorter than the array form
    chunk = Chunk(2, 100_000, data)
    assert len(encode_chunk(chunk)) - len(encode_fanout_chunk(chunk)) == 4
    assert decode_chunk(encode_fanout_chunk(chunk)) == decode_chunk(encode_chunk(chunk)) == chunk


@settings(max_examples=100, deadline=None)
@given(pkg=st.integers(0, MAX_PACKAGE_ID), offset=st.integers(0, MAX_TRANSFER_BYTES - 512),
       data=st.binary(max_size=512))
def test_fanout_chunks_round_trip(pkg: int, offset: int, data: bytes) -> None:
    """Every fan-out chunk the encoder accepts decodes to an equal chunk."""
    chunk = Chunk(pkg, offset, data)
    assert decode_chunk(encode_fanout_chunk(chunk)) == chunk


def test_largest_fanout_chunk_fits_its_cap() -> None:
    chunk = Chunk(MAX_PACKAGE_ID, MAX_TRANSFER_BYTES - MAX_CHUNK_BYTES, b"\xaa" * MAX_CHUNK_BYTES)
    payload = encode_fanout_chunk(chunk)
    assert len(payload) <= MAX_CHUNK_MSG_BYTES
    assert decode_chunk(payload) == chunk


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x01", Reason.CBOR_MALFORMED),  # no offset
        (b"\x01\x19\x01", Reason.CBOR_MALFORMED),  # truncated offset
        (b"\x18", Reason.CBOR_MALFORMED),  # truncated pkg
        (b"\x01\x1c\x00", Reason.CBOR_MALFORMED),  # reserved length
        (b"\x01\x41\x00", Reason.SCHEMA_MISMATCH),  # offset is a byte string
        (b"\x01\x20", Reason.SCHEMA_MISMATCH),  # offset is negative
        (cbor2.dumps(MAX_PACKAGE_ID + 1) + b"\x00", Reason.VALUE_OUT_OF_RANGE),
        (b"\x01" + cbor2.dumps(MAX_TRANSFER_BYTES) + b"x", Reason.VALUE_OUT_OF_RANGE),
        (b"\x01\x00" + b"x" * (MAX_CHUNK_BYTES + 1), Reason.VALUE_OUT_OF_RANGE),
        (b"\x01\x00" + b"x" * (MAX_CHUNK_MSG_BYTES), Reason.PAYLOAD_TOO_LARGE),
    ],
)
def test_fanout_chunk_refusals(payload: bytes, reason: Reason) -> None:
    """Each way a fan-out chunk can be wrong maps to one reason code."""
    with pytest.raises(ProtocolError) as caught:
        decode_chunk(payload)
    assert caught.value.reason is reason


def test_largest_chunk_fits_its_cap() -> None:
    """A full chunk at the highest offset stays under the chunk topic's payload cap."""
    chunk = Chunk(MAX_PACKAGE_ID, MAX_TRANSFER_BYTES - MAX_CHUNK_BYTES, b"\xaa" * MAX_CHUNK_BYTES)
    payload = encode_chunk(chunk)
    assert len(payload) <= MAX_CHUNK_MSG_BYTES
    assert decode_chunk(payload) == chunk


def test_chunk_accepts_any_bytes_like() -> None:
    """A chunk may be built from a bytearray or a memoryview of the package file."""
    for data in (bytearray(b"ab"), memoryview(b"ab")):
        assert decode_chunk(encode_chunk(Chunk(1, 0, data))).data == b"ab"  # type: ignore[arg-type]


def test_report_keeps_unknown_reason_codes() -> None:
    """A reason newer than this build is kept as a number; a known one maps to Reason."""
    assert decode_report(encode_report(Report(1, DeploymentState.FAILED, 999))).reason is None
    known = decode_report(encode_report(Report(1, DeploymentState.FAILED, 31)))
    assert known.reason is Reason.TRIAL_FAILED
    assert Report(1, DeploymentState.CONFIRMED).detail == 0


@pytest.mark.parametrize(
    ("decoder", "payload", "reason"),
    [
        (decode_chunk_request, b"\x83" + b"\x00" * 40, Reason.PAYLOAD_TOO_LARGE),
        (decode_report, b"\x00" * 33, Reason.PAYLOAD_TOO_LARGE),
        (decode_chunk, b"\x00" * (MAX_CHUNK_MSG_BYTES + 1), Reason.PAYLOAD_TOO_LARGE),
        (decode_chunk_request, b"\x83\x01\x02", Reason.CBOR_MALFORMED),
        (decode_chunk_request, b"\x83\x01\x02\x03\x04", Reason.CBOR_MALFORMED),
        (decode_chunk, b"\x83\x01\x00\x5a\xff\xff\xff\xff", Reason.CBOR_MALFORMED),
        (decode_report, b"\x83" + b"\x81" * 8 + b"\x01\x02\x03", Reason.CBOR_MALFORMED),  # deep
        (decode_report, cbor2.dumps({"pkg": 1}), Reason.SCHEMA_MISMATCH),
        (decode_report, cbor2.dumps([1, 2]), Reason.SCHEMA_MISMATCH),
        (decode_report, cbor2.dumps([1, 2, 3, 4]), Reason.SCHEMA_MISMATCH),
        (decode_report, cbor2.dumps([1, "failed", 0]), Reason.SCHEMA_MISMATCH),
        (decode_report, cbor2.dumps([1, 7, None]), Reason.SCHEMA_MISMATCH),
        (decode_report, cbor2.dumps([1, 9, 0]), Reason.VALUE_OUT_OF_RANGE),
        (decode_report, cbor2.dumps([1, 7, 0x10000]), Reason.VALUE_OUT_OF_RANGE),
        (decode_report, cbor2.dumps([-1, 7, 0]), Reason.VALUE_OUT_OF_RANGE),
        (decode_chunk_request, cbor2.dumps([1, 0, 0]), Reason.VALUE_OUT_OF_RANGE),
        (decode_chunk_request, cbor2.dumps([1, 0, MAX_CHUNK_BYTES + 1]), Reason.VALUE_OUT_OF_RANGE),
        (decode_chunk_request, cbor2.dumps([1, MAX_TRANSFER_BYTES, 1]), Reason.VALUE_OUT_OF_RANGE),
        (decode_chunk_request, cbor2.dumps([MAX_PACKAGE_ID + 1, 0, 1]), Reason.VALUE_OUT_OF_RANGE),
        (decode_chunk_request, cbor2.dumps([1, 0, 1.0]), Reason.SCHEMA_MISMATCH),
        (decode_chunk, cbor2.dumps([1, 0, "text"]), Reason.SCHEMA_MISMATCH),
        (decode_chunk, cbor2.dumps([1, 0, [1, 2]]), Reason.SCHEMA_MISMATCH),
        (decode_chunk, cbor2.dumps([1, 0, cbor2.CBORTag(24, b"")]), Reason.SCHEMA_MISMATCH),
        (
            decode_chunk,
            cbor2.dumps([1, 0, b"x" * (MAX_CHUNK_BYTES + 1)]),
            Reason.VALUE_OUT_OF_RANGE,
        ),
        (decode_chunk, cbor2.dumps([1, MAX_TRANSFER_BYTES, b"x"]), Reason.VALUE_OUT_OF_RANGE),
    ],
)
def test_decoders_refuse_with_a_reason(decoder: Decoder, payload: bytes, reason: Reason) -> None:
    """Each way a message can be wrong maps to one reason code, never to another exception."""
    with pytest.raises(ProtocolError) as caught:
        decoder(payload)
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    ("encode", "message"),
    [
        (encode_chunk_request, ChunkRequest(1, 0, 0)),
        (encode_chunk_request, ChunkRequest(1, MAX_TRANSFER_BYTES - 1, 2)),
        (encode_chunk, Chunk(1, 0, b"x" * (MAX_CHUNK_BYTES + 1))),
        (encode_chunk, Chunk(-1, 0, b"")),
        (encode_report, Report(1, 12, 0)),  # type: ignore[arg-type]
        (encode_report, Report(1, DeploymentState.FAILED, -3)),
    ],
)
def test_encoders_refuse_invalid_messages(
    encode: Callable[[object], bytes], message: object
) -> None:
    """The encoders refuse what the decoders would refuse."""
    with pytest.raises(ProtocolError) as caught:
        encode(message)
    assert caught.value.reason is Reason.VALUE_OUT_OF_RANGE


def test_encode_chunk_refuses_non_bytes() -> None:
    """Text is not chunk data."""
    with pytest.raises(ProtocolError) as caught:
        encode_chunk(Chunk(1, 0, "text"))  # type: ignore[arg-type]
    assert caught.value.reason is Reason.SCHEMA_MISMATCH
