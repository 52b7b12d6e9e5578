"""Fuzz every decoder: whatever the bytes, the result is a valid object or a ProtocolError.

Devices are untrusted and the worker must keep going, so no input may raise TypeError, a cbor2
error, RecursionError or MemoryError, and no input may be refused with a code outside the four
a decoder is allowed to use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sdk.protocol.events import (
    Event,
    EventBatch,
    MessageKind,
    PackedBatch,
    Summary,
    decode_batch,
    decode_message,
    decode_message_packed,
    decode_summary,
    encode_batch,
    encode_summary,
    unpack_batches,
)
from device_sdk.protocol.limits import (
    MAX_COUNT,
    MAX_LATENCY_100US,
    MAX_MODEL_ID,
    MAX_T0_MS,
    MAX_UINT63,
    MAX_WINDOW_S,
    MIN_T0_MS,
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
    encode_report,
)
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.status import (
    Capabilities,
    LinkState,
    Status,
    decode_status,
    encode_status,
)
from device_sdk.protocol.topics import DeviceTopic, PackageTopic, parse_topic

T0 = 1_717_000_000_000
DECODE_REASONS = {
    Reason.PAYLOAD_TOO_LARGE,
    Reason.CBOR_MALFORMED,
    Reason.SCHEMA_MISMATCH,
    Reason.VALUE_OUT_OF_RANGE,
}
DECODERS: dict[str, tuple[Callable[[bytes], object], tuple[type, ...]]] = {
    "message": (decode_message, (EventBatch, Summary)),
    "message_packed": (decode_message_packed, (PackedBatch, Summary)),
    "message_packed_v0": (decode_message_packed, (PackedBatch, Summary)),
    "message_summary": (decode_message, (EventBatch, Summary)),
    "message_packed_summary": (decode_message_packed, (PackedBatch, Summary)),
    "message_packed_summary_v1": (decode_message_packed, (PackedBatch, Summary)),
    "batch": (decode_batch, (EventBatch,)),
    "batch_v0": (decode_batch, (EventBatch,)),
    "summary": (decode_summary, (Summary,)),
    "summary_v1": (decode_summary, (Summary,)),
    "status": (decode_status, (Status,)),
    "status_lean": (decode_status, (Status,)),  # without the capabilities (later statuses)
    "chunk_request": (decode_chunk_request, (ChunkRequest,)),
    "chunk": (decode_chunk, (Chunk,)),
    "report": (decode_report, (Report,)),
}
# One valid payload per decoder: mutations of these reach past the first type check.
VALID: dict[str, bytes] = {
    "message": encode_batch(
        EventBatch.of(3, 2, [Event(T0, 1, 200, 90), Event(T0 + 999, 4, 30, 400)])
    ),
    "batch": encode_batch(EventBatch.of(1, 1, [Event(T0 + i, i % 7, i, i) for i in range(40)])),
    "message_packed": encode_batch(
        EventBatch.of(T0, 1, [Event(T0 + 997 * i, i % 5, 90 + i, 300 - i) for i in range(33)])
    ),
    # The kind 0 of older devices: a byte string per column.
    "batch_v0": encode_batch(
        EventBatch.of(1, 1, [Event(T0 + i, i % 7, i, i) for i in range(40)]), kind=MessageKind.BATCH
    ),
    "message_packed_v0": encode_batch(
        EventBatch.of(T0, 1, [Event(T0 + 997 * i, i % 5, 90 + i, 300 - i) for i in range(33)]),
        kind=MessageKind.BATCH,
    ),
    # Summaries: kind 3 (seq - t0), numbered from the window's start as devices number them.
    "summary": encode_summary(Summary(T0, T0, 2, 60, [5, 0, 7], [200, 0, 180], 120)),
    "message_summary": encode_summary(Summary(T0 + 1, T0, 9, 3600, [1] * 10, [99] * 10, 7)),
    "message_packed_summary": encode_summary(Summary(T0, T0, 2, 60, [5, 0, 7], [200, 0, 180], 12)),
    # The kind 1 of older devices: the whole seq.
    "summary_v1": encode_summary(
        Summary(9, T0, 2, 60, [5, 0, 7], [200, 0, 180], 120), kind=MessageKind.SUMMARY
    ),
    "message_packed_summary_v1": encode_summary(
        Summary(T0, T0, 2, 60, [5, 0, 7], [200, 0, 180], 120), kind=MessageKind.SUMMARY
    ),
    "status": encode_status(
        Status(
            LinkState.ONLINE,
            4,
            0,
            10,
            2048,
            3,
            Capabilities("fw", "tflm", ["ADD", "CONV_2D"], 4096, 65536, 32),
        )
    ),
    "status_lean": encode_status(Status(LinkState.ONLINE, 4, 0, 10, 2048, 3)),
    "chunk_request": encode_chunk_request(ChunkRequest(7, 1024, 512)),
    "chunk": encode_chunk(Chunk(7, 1024, b"\x00\x01\x02" * 20)),
    "report": encode_report(Report(7, DeploymentState.FAILED, Reason.MODEL_DIGEST_MISMATCH)),
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_decoder(name: str, payload: bytes) -> None:
    """Assert ``payload`` decodes to the decoder's type or is refused with a decode reason.

    The packed events decoder (the server's) must also decide exactly as ``decode_message``
    does, and unpack to the same events.
    """
    decoder, types = DECODERS[name]
    try:
        result = decoder(payload)
    except ProtocolError as exc:
        assert exc.reason in DECODE_REASONS, exc
        result = exc
    else:
        assert isinstance(result, types)
    if decoder is decode_message_packed:
        try:
            full: object = decode_message(payload)
        except ProtocolError as exc:
            assert isinstance(result, ProtocolError), (exc, result)
            assert (result.reason, result.detail) == (exc.reason, exc.detail)
            return
        if isinstance(result, PackedBatch):
            assert result.batch() == full
            columns = unpack_batches([result])
            assert isinstance(full, EventBatch)
            assert columns.times.tolist() == [e.t_ms for e in full.events]
            assert columns.latencies.tolist() == [e.latency_100us for e in full.events]
        else:
            assert result == full


def _scalars() -> st.SearchStrategy[object]:
    return st.one_of(
        st.integers(min_value=-(2**64), max_value=2**64 - 1),
        st.integers(min_value=-300, max_value=300),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=True),
        st.binary(max_size=40),
        st.text(max_size=20),
        st.sampled_from([cbor2.undefined, cbor2.CBORSimpleValue(99)]),
    )


cbor_values = st.recursive(
    _scalars(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=10),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers(-5, 30)), inner, max_size=6),
        st.builds(
            cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 4, 5, 24, 28, 29, 30, 258, 99]), inner
        ),
    ),
    max_leaves=30,
)
decoder_names = st.sampled_from(sorted(DECODERS))


@FUZZ
@given(name=decoder_names, payload=st.binary(max_size=300))
def test_random_bytes(name: str, payload: bytes) -> None:
    """Random bytes are refused or decode; nothing else happens."""
    check_decoder(name, payload)


@FUZZ
@given(name=decoder_names, value=cbor_values)
def test_random_cbor(name: str, value: object) -> None:
    """Well-formed CBOR of any shape (wrong types, negatives, tags, floats) is refused cleanly."""
    check_decoder(name, cbor2.dumps(value))


@FUZZ
@given(name=decoder_names, data=st.data())
def test_valid_messages_with_one_item_replaced(name: str, data: st.DataObject) -> None:
    """A valid message with one element or value swapped for random CBOR is refused cleanly."""
    message = cbor2.loads(VALID[name])
    value = data.draw(cbor_values)
    if isinstance(message, dict):
        key = data.draw(st.sampled_from([*message, "extra"]))
        message = {**message, key: value}
    else:
        index = data.draw(st.integers(0, len(message)))
        message = [*message[:index], value, *message[index + 1 :]]
    check_decoder(name, cbor2.dumps(message))


@FUZZ
@given(name=decoder_names, data=st.data())
def test_valid_messages_with_bytes_flipped_or_cut(name: str, data: st.DataObject) -> None:
    """Corrupting or truncating the bytes of a valid message never escapes as another error."""
    payload = bytearray(VALID[name])
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(payload) - 1))
        payload[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    check_decoder(name, bytes(payload[:cut]) if data.draw(st.booleans()) else bytes(payload))


@FUZZ
@given(
    offset=st.one_of(st.integers(-(2**64), 2**64 - 1), st.integers(-T0 - 5, 5)),
    count=st.integers(1, 6),
    columns=st.one_of(
        st.binary(max_size=40),
        st.lists(st.sampled_from([b"\x00", b"\x01", b"\x02", b"\x08", b"\x20", b"\x21",
                                  b"\x7f", b"\x80", b"\xff", b"\x00\x00", b"\x04\xe8\x07"]),
                 max_size=20).map(b"".join),
    ),
)
def test_kind_2_batches_with_any_columns(offset: int, count: int, columns: bytes) -> None:
    """A kind-2 header with any seq offset and any bytes for its columns string: decoded and
    unpacked consistently, or refused with a decode reason (truncated, trailing, too wide)."""
    payload = cbor2.dumps([MessageKind.BATCH2.value, offset, T0, 1, count, columns])
    for name in ("message", "message_packed", "batch"):
        check_decoder(name, payload)
    try:
        batch = decode_batch(payload)
    except ProtocolError:
        return
    assert batch.seq == T0 + offset and len(batch.events) == count
    assert decode_batch(encode_batch(batch)) == batch  # and it re-encodes to what it decodes


# Values at the edges of a summary's ranges, and of seq - t0's around T0.
_edges = st.sampled_from([
    -1, 0, 1, 255, 256, 86_400, 86_401, 600_000, 600_001, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
    -T0, -T0 - 1, MAX_UINT63 - T0, MAX_UINT63 - T0 + 1, MAX_UINT63, MAX_UINT63 + 1,
    MIN_T0_MS - 1, MAX_T0_MS + 1, -(2**64), 2**64 - 1,
])
_summaries = st.builds(
    Summary,
    seq=st.one_of(st.integers(0, MAX_UINT63), st.integers(T0 - 30, T0 + 30)),
    t0_ms=st.one_of(st.just(T0), st.integers(MIN_T0_MS, MAX_T0_MS)),
    model=st.integers(0, MAX_MODEL_ID),
    window_s=st.integers(1, MAX_WINDOW_S),
    counts=st.lists(st.integers(0, MAX_COUNT), max_size=6),
    mean_scores=st.just([]),  # as long as counts: filled in below
    mean_latency_100us=st.integers(0, MAX_LATENCY_100US),
).map(lambda s: replace(s, mean_scores=[c % 256 for c in s.counts]))


@FUZZ
@given(
    kind=st.sampled_from([MessageKind.SUMMARY2, MessageKind.SUMMARY]),
    summary=_summaries,
    data=st.data(),
)
def test_summaries_with_items_replaced(
    kind: MessageKind, summary: Summary, data: st.DataObject
) -> None:
    """A valid summary of either kind with up to two items after the kind replaced (edge
    values, any int, any CBOR, a list of ints): decoded consistently, or refused with a decode
    reason. What decodes has ``seq = t0 + seq_minus_t0`` (kind 3) and re-encodes to the same
    bytes, and to the same summary in the other kind."""
    items = list(cbor2.loads(encode_summary(summary, kind=kind)))
    for _ in range(data.draw(st.integers(0, 2))):
        index = data.draw(st.integers(1, len(items) - 1))
        items[index] = data.draw(st.one_of(
            _edges, st.integers(-(2**64), 2**64 - 1), cbor_values,
            st.lists(st.one_of(_edges, st.integers(0, 300)), max_size=7),
        ))
    payload = cbor2.dumps(items)
    for name in ("message", "message_packed", "summary"):
        check_decoder(name, payload)
    try:
        decoded = decode_summary(payload)
    except ProtocolError:
        return
    seq, t0 = items[1], items[2]
    assert decoded.seq == (t0 + seq if kind == MessageKind.SUMMARY2 else seq)  # type: ignore
    assert len(decoded.counts) == len(decoded.mean_scores)
    assert encode_summary(decoded, kind=kind) == payload
    other = MessageKind.SUMMARY if kind == MessageKind.SUMMARY2 else MessageKind.SUMMARY2
    assert decode_summary(encode_summary(decoded, kind=other)) == decoded


@FUZZ
@given(
    name=decoder_names,
    major=st.integers(0, 7),
    length=st.one_of(st.integers(24, 2**64 - 1), st.sampled_from([2**32, 2**63, 2**64 - 1])),
    tail=st.binary(max_size=16),
)
def test_huge_declared_lengths(name: str, major: int, length: int, tail: bytes) -> None:
    """A header declaring a huge string, array or map is refused without allocating it."""
    header = bytes([major << 5 | 27]) + length.to_bytes(8, "big")
    check_decoder(name, header + tail)
    check_decoder(name, b"\x83\x01\x02" + header + tail)


@FUZZ
@given(name=decoder_names, count=st.integers(0, 5000), items=st.binary(min_size=1, max_size=3))
def test_huge_arrays(name: str, count: int, items: bytes) -> None:
    """Long arrays of small items are refused by size or schema, at any length."""
    header = bytes([0x9A]) + count.to_bytes(4, "big")
    check_decoder(name, header + items * count)


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize(
    "opener", [b"\x81", b"\xa1\x00", b"\xa1\x61k", b"\xc1", b"\xd8\x18", b"\x9f", b"\x5f"]
)
def test_deep_nesting(name: str, opener: bytes) -> None:
    """Nesting 100,000 deep (arrays, maps, tags, indefinite items) is refused, not recursed."""
    check_decoder(name, opener * 100_000 + b"\x00")


@FUZZ
@given(
    topic=st.one_of(
        st.text(max_size=80),
        st.text(alphabet="fleet/v1pkg+#$ -_0123456789chunkotaeventsstatus", max_size=40),
        st.builds("fleet/v1/{}/{}".format, st.text(max_size=70), st.text(max_size=12)),
        st.builds("fleet/v1/pkg/{}/{}".format, st.text(max_size=12), st.text(max_size=8)),
    )
)
def test_random_topics(topic: str) -> None:
    """Any string parses to a topic or is refused with SCHEMA_MISMATCH."""
    try:
        parsed = parse_topic(topic)
    except ProtocolError as exc:
        assert exc.reason is Reason.SCHEMA_MISMATCH
    else:
        assert isinstance(parsed, DeviceTopic | PackageTopic)
        assert "+" not in topic and "#" not in topic
