"""Event batches and summaries: wire layout, validation both ways, size on the wire."""

from __future__ import annotations

import random
from dataclasses import replace

import cbor2
import pytest
from hypothesis import given, settings
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
    summarize,
    unpack_batches,
)
from device_sdk.protocol.limits import (
    MAX_COUNT,
    MAX_DELTA_MS,
    MAX_EVENTS_BYTES,
    MAX_EVENTS_PER_BATCH,
    MAX_LABELS,
    MAX_LATENCY_100US,
    MAX_MODEL_ID,
    MAX_T0_MS,
    MAX_UINT63,
    MIN_T0_MS,
)
from device_sdk.protocol.reasons import ProtocolError, Reason
from testkit.traffic import naive_json, realistic_stream

T0 = 1_717_000_000_000  # 2024-05-29T16:26:40Z
MQTT_FRAMING = 30  # bytes of PUBLISH header, topic and packet id the brief budgets per message

# Three events, worked out by hand in CDDL.md: pins the packed-column layout. Numbered as a
# device numbers them, from its first event's time: seq - t0 = 0.
GOLDEN_BATCH = EventBatch(
    seq=T0,
    t0_ms=T0,
    model=3,
    events=[
        Event(T0, 2, 200, 120),
        Event(T0 + 1000, 5, 180, 130),
        Event(T0 + 2010, 2, 255, 115),
    ],
)
GOLDEN_COLUMNS = {
    "deltas": "04 e807 a0",  # 1000, 1010: width 4, min 1000, fields 0 and 10
    "labels": "02 02 0c",  # 2, 5, 2: width 2, min 2, fields 0, 3, 0
    "scores": "07 b401 14c012",  # 200, 180, 255: width 7, min 180, fields 20, 0, 75
    "latencies": "04 73 f500",  # 120, 130, 115: width 4, min 115, fields 5, 15, 0
}
COLUMN_ORDER = ("deltas", "labels", "scores", "latencies")  # wire order: never change
# kind 2, seq - t0 = 0, t0, model 3, n 3, the four columns in one 17-byte string
GOLDEN_BATCH_HEX = "86 02 00 1b0000018fc52cd200 03 03 51" + " ".join(GOLDEN_COLUMNS.values())
# The same events as an older device sends them: kind 0, seq 1, a byte string per column.
GOLDEN_BATCH_V0 = replace(GOLDEN_BATCH, seq=1)
GOLDEN_BATCH_V0_HEX = (
    "89 00 01 1b0000018fc52cd200 03 03"
    " 44 04e807a0"
    " 43 02020c"
    " 46 07b40114c012"
    " 44 0473f500"
)
# A summary numbered from its window's start, as devices number them: seq - t0 = 0.
GOLDEN_SUMMARY = Summary(T0, T0, 3, 60, [3, 0, 1], [200, 0, 100], 120)
# kind 3, seq - t0 = 0, t0, model 3, window 60 s, counts, mean scores, mean latency
GOLDEN_SUMMARY_HEX = "88 03 00 1b0000018fc52cd200 03 183c 83030001 8318c8001864 1878"
# An older device's summary: kind 1, the whole seq (here 2).
GOLDEN_SUMMARY_V1 = replace(GOLDEN_SUMMARY, seq=2)
GOLDEN_SUMMARY_V1_HEX = "88 01 02 1b0000018fc52cd200 03 183c 83030001 8318c8001864 1878"
SUMMARY_FIELDS = ["t0", "model", "window_s", "counts", "mean_scores", "latency"]


def _hex(spaced: str) -> bytes:
    return bytes.fromhex(spaced.replace(" ", ""))


def _reason(payload: bytes) -> Reason:
    """Return why ``decode_message`` refuses ``payload``; the packed decoder must agree."""
    with pytest.raises(ProtocolError) as caught:
        decode_message(payload)
    with pytest.raises(ProtocolError) as packed:
        decode_message_packed(payload)
    assert (packed.value.reason, packed.value.detail) == (caught.value.reason,
                                                           caught.value.detail)
    return caught.value.reason


def _unpacked(batches: list[PackedBatch]) -> list[list[Event]]:
    """Return the events of each batch as ``unpack_batches`` gives them."""
    columns = unpack_batches(batches)
    rows = [Event(*r) for r in zip(columns.times.tolist(), columns.labels.tolist(),
                                   columns.scores.tolist(), columns.latencies.tolist(),
                                   strict=True)]
    out, start = [], 0
    for count in columns.counts.tolist():
        out.append(rows[start:start + count])
        start += count
    return out


def _batch_items(**changes: object) -> list[object]:
    """Return the items of the golden kind-2 batch with some replaced."""
    items: list[object] = list(cbor2.loads(encode_batch(GOLDEN_BATCH)))
    names = ["kind", "seq_minus_t0", "t0", "model", "n", "columns"]
    for name, value in changes.items():
        items[names.index(name)] = value
    return items


def _columns(**changes: bytes) -> bytes:
    """Return the golden batch's four packed columns back to back, some replaced."""
    columns = {name: _hex(value) for name, value in GOLDEN_COLUMNS.items()} | changes
    return b"".join(columns[name] for name in COLUMN_ORDER)


def _batch_v0_items(**changes: object) -> list[object]:
    """Return the items of the golden kind-0 batch (an older device's) with some replaced."""
    items: list[object] = list(cbor2.loads(_hex(GOLDEN_BATCH_V0_HEX)))
    names = ["kind", "seq", "t0", "model", "n", *COLUMN_ORDER]
    for name, value in changes.items():
        items[names.index(name)] = value
    return items


def _summary_items(**changes: object) -> list[object]:
    """Return the items of the golden kind-3 summary with some replaced."""
    items: list[object] = list(cbor2.loads(encode_summary(GOLDEN_SUMMARY)))
    names = ["kind", "seq_minus_t0", *SUMMARY_FIELDS]
    for name, value in changes.items():
        items[names.index(name)] = value
    return items


def _summary_v1_items(**changes: object) -> list[object]:
    """Return the items of the golden kind-1 summary (an older device's) with some replaced."""
    items: list[object] = list(cbor2.loads(_hex(GOLDEN_SUMMARY_V1_HEX)))
    names = ["kind", "seq", *SUMMARY_FIELDS]
    for name, value in changes.items():
        items[names.index(name)] = value
    return items


# -- wire layout ----------------------------------------------------------------------------


def test_batch_encodes_to_the_golden_bytes() -> None:
    """The kind-2 layout is pinned byte for byte (the C firmware shares these vectors)."""
    assert encode_batch(GOLDEN_BATCH) == _hex(GOLDEN_BATCH_HEX)
    assert decode_message(_hex(GOLDEN_BATCH_HEX)) == GOLDEN_BATCH


def test_an_older_devices_kind_0_batch_still_decodes() -> None:
    """Kind 0 (four byte strings, the full seq) decodes as before, to the same columns."""
    assert decode_message(_hex(GOLDEN_BATCH_V0_HEX)) == GOLDEN_BATCH_V0
    assert decode_batch(_hex(GOLDEN_BATCH_V0_HEX)) == GOLDEN_BATCH_V0
    assert encode_batch(GOLDEN_BATCH_V0, kind=MessageKind.BATCH) == _hex(GOLDEN_BATCH_V0_HEX)
    old = decode_message_packed(_hex(GOLDEN_BATCH_V0_HEX))
    new = decode_message_packed(encode_batch(GOLDEN_BATCH_V0))
    assert isinstance(old, PackedBatch) and old == new
    assert _unpacked([old, new]) == [GOLDEN_BATCH.events] * 2


def test_seq_travels_as_its_difference_from_t0() -> None:
    """seq = t0 costs one byte; any other seq in range round-trips, below t0 as a negative int."""
    assert len(encode_batch(replace(GOLDEN_BATCH, seq=T0 + 1))) == len(_hex(GOLDEN_BATCH_HEX))
    for seq in (0, 1, T0 - 1, T0 + 1, T0 + 24, T0 + 2**32, MAX_UINT63):
        batch = replace(GOLDEN_BATCH, seq=seq)
        payload = encode_batch(batch)
        assert cbor2.loads(payload)[1] == seq - T0
        assert decode_message(payload) == batch
    # Kind 0 spends nine bytes on a unix-ms seq where kind 2 spends one on the offset, and four
    # byte-string heads where kind 2 has one.
    saved = len(encode_batch(GOLDEN_BATCH, kind=MessageKind.BATCH)) - len(
        encode_batch(GOLDEN_BATCH))
    assert saved == (9 - 1) + (4 - 1)


def test_summary_encodes_to_the_golden_bytes() -> None:
    """A summary (kind 3) is a plain CBOR array with per-label arrays and seq - t0."""
    assert encode_summary(GOLDEN_SUMMARY) == _hex(GOLDEN_SUMMARY_HEX)
    assert decode_message(_hex(GOLDEN_SUMMARY_HEX)) == GOLDEN_SUMMARY


def test_an_older_devices_kind_1_summary_still_decodes() -> None:
    """Kind 1 (the whole seq) decodes as before, to the same Summary as kind 3."""
    assert decode_message(_hex(GOLDEN_SUMMARY_V1_HEX)) == GOLDEN_SUMMARY_V1
    assert decode_message_packed(_hex(GOLDEN_SUMMARY_V1_HEX)) == GOLDEN_SUMMARY_V1
    assert decode_summary(_hex(GOLDEN_SUMMARY_V1_HEX)) == GOLDEN_SUMMARY_V1
    assert decode_summary(encode_summary(GOLDEN_SUMMARY_V1)) == GOLDEN_SUMMARY_V1
    assert (encode_summary(GOLDEN_SUMMARY_V1, kind=MessageKind.SUMMARY)
            == _hex(GOLDEN_SUMMARY_V1_HEX))


def test_summary_seq_travels_as_its_difference_from_t0() -> None:
    """A summary numbered from its window's start spends one byte on seq, eight fewer than
    kind 1; any other seq in range round-trips, below t0 as a negative int."""
    for seq in (0, 1, T0 - 1, T0, T0 + 1, T0 + 24, T0 + 2**32, MAX_UINT63):
        summary = replace(GOLDEN_SUMMARY, seq=seq)
        payload = encode_summary(summary)
        assert cbor2.loads(payload)[:2] == [MessageKind.SUMMARY2, seq - T0]
        assert decode_message(payload) == summary
        assert decode_summary(encode_summary(summary, kind=MessageKind.SUMMARY)) == summary
    saved = len(encode_summary(GOLDEN_SUMMARY, kind=MessageKind.SUMMARY)) - len(
        encode_summary(GOLDEN_SUMMARY))
    assert saved == 9 - 1


def test_each_encoder_refuses_the_other_encoders_kinds() -> None:
    """A batch is never sent as a summary kind, nor a summary as a batch kind."""
    for kind in (MessageKind.SUMMARY, MessageKind.SUMMARY2):
        with pytest.raises(ValueError, match="not a batch kind"):
            encode_batch(GOLDEN_BATCH, kind=kind)
    for kind in (MessageKind.BATCH, MessageKind.BATCH2):
        with pytest.raises(ValueError, match="not a summary kind"):
            encode_summary(GOLDEN_SUMMARY, kind=kind)


def test_constant_column_costs_three_bytes() -> None:
    """A column whose values are all equal packs to width 0: header and minimum only."""
    events = [Event(T0 + i * 1000, 4, 99, 250) for i in range(64)]
    items = cbor2.loads(encode_batch(EventBatch.of(9, 1, events)))
    assert items[5] == b"\x00\xe8\x07" + b"\x00\x04" + b"\x00\x63" + b"\x00\xfa\x01"


def test_single_event_batch_has_an_empty_delta_column() -> None:
    """The first event sits at t0, so one event leaves no delta to send."""
    batch = EventBatch.of(5, 2, [Event(T0, 1, 2, 3)])
    items = cbor2.loads(encode_batch(batch))
    assert items[4:6] == [1, b"\x00\x00" + b"\x00\x01" + b"\x00\x02" + b"\x00\x03"]
    assert decode_batch(encode_batch(batch)) == batch


def test_kind_selects_the_decoder() -> None:
    """decode_message dispatches on the kind; the typed decoders refuse the other kinds."""
    batches = [_hex(GOLDEN_BATCH_HEX), _hex(GOLDEN_BATCH_V0_HEX)]
    summaries = [_hex(GOLDEN_SUMMARY_HEX), _hex(GOLDEN_SUMMARY_V1_HEX)]
    for payload in batches:
        assert isinstance(decode_message(payload), EventBatch)
        assert isinstance(decode_message_packed(payload), PackedBatch)
        assert isinstance(decode_batch(payload), EventBatch)
        with pytest.raises(ProtocolError) as caught:
            decode_summary(payload)
        assert caught.value.reason is Reason.SCHEMA_MISMATCH
    for payload in summaries:
        assert isinstance(decode_message(payload), Summary)
        assert isinstance(decode_message_packed(payload), Summary)
        assert isinstance(decode_summary(payload), Summary)
        with pytest.raises(ProtocolError) as caught:
            decode_batch(payload)
        assert caught.value.reason is Reason.SCHEMA_MISMATCH
    # wire values
    assert [int(k) for k in MessageKind] == [0, 1, 2, 3]
    assert (MessageKind.BATCH, MessageKind.SUMMARY, MessageKind.BATCH2,
            MessageKind.SUMMARY2) == (0, 1, 2, 3)


# -- round trips ----------------------------------------------------------------------------

_events = st.lists(
    st.tuples(
        st.integers(0, MAX_DELTA_MS),
        st.integers(0, MAX_LABELS - 1),
        st.integers(0, 255),
        st.integers(0, MAX_LATENCY_100US),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    seq=st.integers(0, MAX_UINT63),
    t0=st.integers(MIN_T0_MS, MIN_T0_MS + 10**12),
    model=st.integers(0, MAX_MODEL_ID),
    rows=_events,
    kind=st.sampled_from([MessageKind.BATCH2, MessageKind.BATCH]),
)
def test_any_valid_batch_round_trips(
    seq: int, t0: int, model: int, rows: list[tuple[int, int, int, int]], kind: MessageKind
) -> None:
    """Every batch the encoder accepts decodes to an equal batch, in either batch kind."""
    t, events = t0, []
    for index, (delta, label, score, latency) in enumerate(rows):
        t += delta if index else 0
        events.append(Event(t, label, score, latency))
    batch = EventBatch(seq, t0, model, events)
    assert decode_message(encode_batch(batch, kind=kind)) == batch
    packed = decode_message_packed(encode_batch(batch, kind=kind))
    assert isinstance(packed, PackedBatch)
    assert packed.batch() == batch
    assert _unpacked([packed]) == [events]


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.integers(1, MAX_EVENTS_PER_BATCH),
            st.sampled_from([0, 1, 3, 8, 13, 20, 31, 32]),  # bit width of the columns' spread
            st.integers(0, 2**32),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_unpack_batches_matches_each_batch(batches: list[tuple[int, int, int]]) -> None:
    """Many batches unpacked at once give every batch's own events, at every column width."""
    packed, expected = [], []
    for index, (count, width, seed) in enumerate(batches):
        rng = random.Random(seed)

        def spread(low: int, high: int, width: int = width, rng: random.Random = rng) -> int:
            return min(high, low + rng.randrange(1 << width))

        t, events = MIN_T0_MS + rng.randrange(10**12), []
        for _ in range(count):
            events.append(Event(t, spread(0, MAX_LABELS - 1), spread(0, 255),
                                spread(0, MAX_LATENCY_100US)))
            t += spread(0, 86_400_000 // 2)
        batch = EventBatch.of(index, 1, events)
        packed.append(PackedBatch.of(batch))
        expected.append(events)
    assert _unpacked(packed) == expected
    assert [p.batch().events for p in packed] == expected


def test_unpack_batches_of_nothing_is_empty() -> None:
    """No batches unpack to empty columns (a call with only summaries stores no events)."""
    columns = unpack_batches([])
    assert [len(c) for c in columns] == [0] * 5


@settings(max_examples=100, deadline=None)
@given(
    seq=st.one_of(st.integers(0, MAX_UINT63), st.integers(T0 - 300, T0 + 300)),
    t0=st.one_of(st.just(T0), st.integers(MIN_T0_MS, MAX_T0_MS)),
    model=st.integers(0, MAX_MODEL_ID),
    counts=st.lists(st.tuples(st.integers(0, MAX_COUNT), st.integers(0, 255)), max_size=40),
    window=st.integers(1, 86_400),
    latency=st.integers(0, MAX_LATENCY_100US),
    kind=st.sampled_from([MessageKind.SUMMARY2, MessageKind.SUMMARY]),
)
def test_any_valid_summary_round_trips(
    seq: int, t0: int, model: int, counts: list[tuple[int, int]], window: int, latency: int,
    kind: MessageKind,
) -> None:
    """Every summary the encoder accepts decodes to an equal summary, in either summary kind."""
    summary = Summary(seq, t0, model, window, [c for c, _ in counts], [s for _, s in counts],
                      latency)
    payload = encode_summary(summary, kind=kind)
    assert cbor2.loads(payload)[0] == kind
    assert decode_message(payload) == summary
    assert decode_message_packed(payload) == summary
    assert decode_summary(payload) == summary


def test_encoder_accepts_integer_like_values() -> None:
    """Scores straight from a numpy output tensor (anything with __index__) encode as ints."""

    class Index:
        def __init__(self, value: int) -> None:
            self.value = value

        def __index__(self) -> int:
            return self.value

    event = Event(T0, Index(3), Index(200), Index(90))  # type: ignore[arg-type]
    batch = EventBatch.of(1, 2, [event])
    assert decode_batch(encode_batch(batch)).events == [Event(T0, 3, 200, 90)]


# -- the encoder refuses what the decoder would refuse --------------------------------------


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        (replace(GOLDEN_BATCH, events=[]), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_BATCH, t0_ms=T0 + 1), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_BATCH, seq=-1), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_BATCH, model=MAX_MODEL_ID + 1), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_BATCH, model=True), Reason.SCHEMA_MISMATCH),
        (replace(GOLDEN_BATCH, seq=1.0), Reason.SCHEMA_MISMATCH),
        (EventBatch.of(1, 1, [Event(1_000, 0, 0, 0)]), Reason.VALUE_OUT_OF_RANGE),
        (
            EventBatch.of(1, 1, [Event(T0, 0, 0, 0), Event(T0 - 1, 0, 0, 0)]),
            Reason.VALUE_OUT_OF_RANGE,
        ),
        (
            EventBatch.of(1, 1, [Event(T0, 0, 0, 0), Event(T0 + MAX_DELTA_MS + 1, 0, 0, 0)]),
            Reason.VALUE_OUT_OF_RANGE,
        ),
        (EventBatch.of(1, 1, [Event(T0, MAX_LABELS, 0, 0)]), Reason.VALUE_OUT_OF_RANGE),
        (EventBatch.of(1, 1, [Event(T0, 0, 256, 0)]), Reason.VALUE_OUT_OF_RANGE),
        (EventBatch.of(1, 1, [Event(T0, 0, -1, 0)]), Reason.VALUE_OUT_OF_RANGE),
        (EventBatch.of(1, 1, [Event(T0, 0, 0, MAX_LATENCY_100US + 1)]), Reason.VALUE_OUT_OF_RANGE),
        (EventBatch.of(1, 1, [Event(T0, 0, 0.5, 0)]), Reason.SCHEMA_MISMATCH),  # type: ignore
        (
            EventBatch.of(1, 1, [Event(T0, 0, 0, 0)] * (MAX_EVENTS_PER_BATCH + 1)),
            Reason.VALUE_OUT_OF_RANGE,
        ),
    ],
)
def test_encoder_refuses_invalid_batches(batch: EventBatch, reason: Reason) -> None:
    """The encoder checks what the decoder checks, so a device never sends what we refuse."""
    with pytest.raises(ProtocolError) as caught:
        encode_batch(batch)
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    ("summary", "reason"),
    [
        (replace(GOLDEN_SUMMARY, window_s=0), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, counts=[1, 2]), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, counts=[-1, 0, 0]), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, mean_scores=[300, 0, 0]), Reason.VALUE_OUT_OF_RANGE),
        (
            replace(
                GOLDEN_SUMMARY, counts=[0] * (MAX_LABELS + 1), mean_scores=[0] * (MAX_LABELS + 1)
            ),
            Reason.VALUE_OUT_OF_RANGE,
        ),
        (replace(GOLDEN_SUMMARY, t0_ms=MAX_T0_MS + 1), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, t0_ms=MIN_T0_MS - 1), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, seq=-1), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, seq=MAX_UINT63 + 1), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, seq=1.0), Reason.SCHEMA_MISMATCH),
        (replace(GOLDEN_SUMMARY, seq=True), Reason.SCHEMA_MISMATCH),
        (replace(GOLDEN_SUMMARY, model=MAX_MODEL_ID + 1), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, counts=[MAX_COUNT + 1, 0, 0]), Reason.VALUE_OUT_OF_RANGE),
        (replace(GOLDEN_SUMMARY, mean_latency_100us=MAX_LATENCY_100US + 1),
         Reason.VALUE_OUT_OF_RANGE),
    ],
)
@pytest.mark.parametrize("kind", [MessageKind.SUMMARY2, MessageKind.SUMMARY])
def test_encoder_refuses_invalid_summaries(
    summary: Summary, reason: Reason, kind: MessageKind
) -> None:
    """Unequal per-label lists, negative counts, a seq out of range and out-of-range means
    never leave a device, in either summary kind."""
    with pytest.raises(ProtocolError) as caught:
        encode_summary(summary, kind=kind)
    assert caught.value.reason is reason


# -- every refusal of the decoder -----------------------------------------------------------

_golden = encode_batch(GOLDEN_BATCH)

# Column contents a decoder refuses (all VALUE_OUT_OF_RANGE), in either batch kind.
_BAD_COLUMNS: list[dict[str, bytes]] = [
    {"labels": b""},
    {"labels": b"\x02\x02\x0c\x00"},  # one byte too many
    {"labels": b"\x02\x02"},  # no room for the fields
    {"labels": b"\x21\x00" + b"\x00" * 13},  # width 33
    {"deltas": b"\xff\x00" + b"\x00" * 64},  # width 255
    {"labels": b"\x02\x02\x4c"},  # padding bits
    {"labels": b"\x00\x80"},  # varint cut
    {"labels": b"\x00\x80\x80\x80\x80\x01"},  # a minimum of 2**28
    {"labels": b"\x00\x80\x80\x80\x80\x80\x00"},  # a varint of six bytes
    {"labels": b"\x00\x80\x08"},  # 1024
    {"labels": b"\x0b\x00\x00\x04\x00\x00\x00"},  # a field of 1024
    {"scores": b"\x00\x80\x02"},  # 256
    {"deltas": b"\x00\x81\xb0\xd9\x29"},  # more than a day
    {"latencies": b"\x00\xc1\xcf\x24"},  # 600,001
    {"latencies": b"\x20\x00" + b"\xff" * 12},  # width 32: 2**32 - 1
]

# seq_minus_t0 a decoder refuses, in either kind that carries it (2 and 3).
_BAD_OFFSETS: list[tuple[object, Reason]] = [
    ("0", Reason.SCHEMA_MISMATCH),
    (0.0, Reason.SCHEMA_MISMATCH),
    (False, Reason.SCHEMA_MISMATCH),
    (None, Reason.SCHEMA_MISMATCH),
    (b"\x00", Reason.SCHEMA_MISMATCH),
    (cbor2.CBORTag(3, b"\x01"), Reason.SCHEMA_MISMATCH),  # a bignum, even a small one
    (-T0 - 1, Reason.VALUE_OUT_OF_RANGE),  # seq -1
    (-(2**64), Reason.VALUE_OUT_OF_RANGE),
    (MAX_UINT63 - T0 + 1, Reason.VALUE_OUT_OF_RANGE),  # seq 2**63
    (2**64 - 1, Reason.VALUE_OUT_OF_RANGE),
]

# Summary contents (after the kind and seq) a decoder refuses, in either summary kind.
_BAD_SUMMARY_FIELDS: list[tuple[dict[str, object], Reason]] = [
    ({"t0": 0}, Reason.VALUE_OUT_OF_RANGE),
    ({"t0": MAX_T0_MS + 1}, Reason.VALUE_OUT_OF_RANGE),
    ({"t0": -1}, Reason.VALUE_OUT_OF_RANGE),
    ({"t0": float(T0)}, Reason.SCHEMA_MISMATCH),
    ({"model": True}, Reason.SCHEMA_MISMATCH),
    ({"model": MAX_MODEL_ID + 1}, Reason.VALUE_OUT_OF_RANGE),
    ({"window_s": 0}, Reason.VALUE_OUT_OF_RANGE),
    ({"window_s": 86_401}, Reason.VALUE_OUT_OF_RANGE),
    ({"window_s": 60.0}, Reason.SCHEMA_MISMATCH),
    ({"counts": [1, 2]}, Reason.VALUE_OUT_OF_RANGE),  # counts and mean_scores differ in length
    ({"mean_scores": [1, 2, 3, 4]}, Reason.VALUE_OUT_OF_RANGE),
    ({"counts": [], "mean_scores": [0]}, Reason.VALUE_OUT_OF_RANGE),
    ({"counts": [-1, 0, 0]}, Reason.VALUE_OUT_OF_RANGE),
    ({"counts": [MAX_COUNT + 1, 0, 0]}, Reason.VALUE_OUT_OF_RANGE),
    ({"counts": [0] * (MAX_LABELS + 1)}, Reason.VALUE_OUT_OF_RANGE),
    ({"mean_scores": [256, 0, 0]}, Reason.VALUE_OUT_OF_RANGE),
    ({"counts": 3}, Reason.SCHEMA_MISMATCH),
    ({"counts": [1, "2", 3]}, Reason.SCHEMA_MISMATCH),
    ({"counts": {0: 3}}, Reason.SCHEMA_MISMATCH),
    ({"mean_scores": b"\xc8\x00\x64"}, Reason.SCHEMA_MISMATCH),
    ({"mean_scores": [200, None, 100]}, Reason.SCHEMA_MISMATCH),
    ({"latency": [1]}, Reason.SCHEMA_MISMATCH),
    ({"latency": MAX_LATENCY_100US + 1}, Reason.VALUE_OUT_OF_RANGE),
    ({"latency": -1}, Reason.VALUE_OUT_OF_RANGE),
]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # Size first: even garbage is refused for its size, before any parsing.
        (b"\xff" * (MAX_EVENTS_BYTES + 1), Reason.PAYLOAD_TOO_LARGE),
        (b"", Reason.CBOR_MALFORMED),
        (b"\xff", Reason.CBOR_MALFORMED),
        (_golden[:-1], Reason.CBOR_MALFORMED),  # truncated
        (_golden + b"\x00", Reason.CBOR_MALFORMED),  # trailing bytes
        (b"\x9f\x00\xff", Reason.CBOR_MALFORMED),  # indefinite length
        (b"\x81" * 50 + b"\x00", Reason.CBOR_MALFORMED),  # nesting deeper than the form
        (b"\x5b" + b"\xff" * 8, Reason.CBOR_MALFORMED),  # declares 2**64 - 1 bytes
        (_golden[:12] + b"\x5b" + b"\xff" * 8, Reason.CBOR_MALFORMED),  # huge columns string
        (cbor2.dumps({"seq": 1}), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps([]), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps([4, 0, T0, 3, 3, _columns()]), Reason.SCHEMA_MISMATCH),  # unknown kind
        (cbor2.dumps([4, *_summary_items()[1:]]), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(["batch"]), Reason.SCHEMA_MISMATCH),
        # kind 2
        (cbor2.dumps(_batch_items()[:5]), Reason.SCHEMA_MISMATCH),  # arity
        (cbor2.dumps([*_batch_items(), b""]), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_v0_items(kind=2)), Reason.SCHEMA_MISMATCH),  # kind 0's layout
        (cbor2.dumps(_summary_items(kind=2)), Reason.SCHEMA_MISMATCH),  # kind 3's layout
        *[(cbor2.dumps(_batch_items(seq_minus_t0=bad)), reason) for bad, reason in _BAD_OFFSETS],
        (cbor2.dumps(_batch_items(t0=0)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(t0=MAX_T0_MS + 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(t0=-1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(model=3.0)), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_items(model=True)), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_items(model=None)), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_items(model=MAX_MODEL_ID + 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(n=0)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(n=MAX_EVENTS_PER_BATCH + 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(n=2**64 - 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(n=4)), Reason.VALUE_OUT_OF_RANGE),  # columns hold 3
        (cbor2.dumps(_batch_items(n=2)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(columns=list(_columns()))), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_items(columns=_columns().hex())), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_items(columns=b"")), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(columns=_columns()[:-1])), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(columns=_columns()[:7])), Reason.VALUE_OUT_OF_RANGE),  # 2 of 4
        (cbor2.dumps(_batch_items(columns=_columns() + b"\x00")), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(columns=_columns() * 2)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(columns=_columns() + bytes(MAX_EVENTS_BYTES - 64))),
         Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_items(t0=MAX_T0_MS, columns=_columns(deltas=b"\x00\x01"))),
         Reason.VALUE_OUT_OF_RANGE),
        *[(cbor2.dumps(_batch_items(columns=_columns(**bad))), Reason.VALUE_OUT_OF_RANGE)
          for bad in _BAD_COLUMNS],
        # kind 0, from older devices
        (cbor2.dumps(_batch_v0_items()[:8]), Reason.SCHEMA_MISMATCH),  # arity
        (cbor2.dumps(_batch_items(kind=0)), Reason.SCHEMA_MISMATCH),  # kind 2's layout
        (cbor2.dumps(_batch_v0_items(seq="1")), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_v0_items(model=3.0)), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_v0_items(labels=[2, 5, 2])), Reason.SCHEMA_MISMATCH),  # not packed
        (cbor2.dumps(_batch_v0_items(seq=cbor2.CBORTag(2, b"\x01"))), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_v0_items(seq=-1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_v0_items(seq=2**64 - 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_v0_items(t0=0)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_v0_items(t0=MAX_T0_MS + 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_v0_items(n=0)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_v0_items(n=MAX_EVENTS_PER_BATCH + 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_batch_v0_items(n=4)), Reason.VALUE_OUT_OF_RANGE),  # columns hold 3
        (cbor2.dumps(_batch_v0_items(t0=MAX_T0_MS, deltas=b"\x00\x01")),
         Reason.VALUE_OUT_OF_RANGE),
        *[(cbor2.dumps(_batch_v0_items(**bad)), Reason.VALUE_OUT_OF_RANGE)
          for bad in _BAD_COLUMNS],
        # kind 3 summaries
        (cbor2.dumps(_summary_items()[:7]), Reason.SCHEMA_MISMATCH),  # arity
        (cbor2.dumps([*_summary_items(), 0]), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps([3]), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_items(kind=3)), Reason.SCHEMA_MISMATCH),  # kind 2's layout
        (cbor2.dumps(_batch_v0_items(kind=3)), Reason.SCHEMA_MISMATCH),  # kind 0's layout
        *[(cbor2.dumps(_summary_items(seq_minus_t0=bad)), reason)
          for bad, reason in _BAD_OFFSETS],
        *[(cbor2.dumps(_summary_items(**bad)), reason) for bad, reason in _BAD_SUMMARY_FIELDS],
        # kind 1 summaries, from older devices
        (cbor2.dumps(_summary_v1_items()[:7]), Reason.SCHEMA_MISMATCH),  # arity
        (cbor2.dumps([*_summary_v1_items(), 0]), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_batch_items(kind=1)), Reason.SCHEMA_MISMATCH),  # kind 2's layout
        (cbor2.dumps(_summary_v1_items(seq="1")), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_summary_v1_items(seq=cbor2.CBORTag(2, b"\x01"))), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_summary_v1_items(seq=-1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_summary_v1_items(seq=MAX_UINT63 + 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_summary_v1_items(seq=2**64 - 1)), Reason.VALUE_OUT_OF_RANGE),
        *[(cbor2.dumps(_summary_v1_items(**bad)), reason)
          for bad, reason in _BAD_SUMMARY_FIELDS],
    ],
)
def test_decoder_refuses_with_a_reason(payload: bytes, reason: Reason) -> None:
    """Each way a payload can be wrong maps to one reason code, never to another exception."""
    assert _reason(payload) is reason


def test_the_widest_offsets_in_range_are_accepted() -> None:
    """seq_minus_t0 may reach seq 0 (a negative int) and seq MAX_UINT63, and no further
    (the refusals past them are in test_decoder_refuses_with_a_reason), in kinds 2 and 3."""
    for offset, seq in ((-T0, 0), (MAX_UINT63 - T0, MAX_UINT63)):
        batch = decode_message(cbor2.dumps(_batch_items(seq_minus_t0=offset)))
        assert batch == replace(GOLDEN_BATCH, seq=seq)
        summary = decode_message(cbor2.dumps(_summary_items(seq_minus_t0=offset)))
        assert summary == replace(GOLDEN_SUMMARY, seq=seq)


def test_size_is_checked_before_parsing() -> None:
    """An oversize payload of valid CBOR is still refused as too large, not parsed."""
    payload = cbor2.dumps([0, b"\x00" * MAX_EVENTS_BYTES])
    assert _reason(payload) is Reason.PAYLOAD_TOO_LARGE


def test_largest_valid_messages_fit_the_cap() -> None:
    """The payload cap never refuses a valid message: worst-case batch and summary fit."""
    spread = [
        Event(
            MIN_T0_MS + i * MAX_DELTA_MS * (i % 2),
            i % MAX_LABELS,
            i % 256,
            MAX_LATENCY_100US * (i % 2),
        )
        for i in range(MAX_EVENTS_PER_BATCH)
    ]
    times = [MIN_T0_MS]
    for i in range(1, MAX_EVENTS_PER_BATCH):
        times.append(times[-1] + (MAX_DELTA_MS if i % 2 else 0))
    events = [replace(e, t_ms=t) for e, t in zip(spread, times, strict=True)]
    batch = encode_batch(EventBatch.of(MAX_UINT63, MAX_MODEL_ID, events))
    older = encode_batch(EventBatch.of(MAX_UINT63, MAX_MODEL_ID, events), kind=MessageKind.BATCH)
    assert len(batch) < len(older) <= MAX_EVENTS_BYTES
    widest = Summary(
        MAX_UINT63,
        MIN_T0_MS,  # the largest seq_minus_t0
        MAX_MODEL_ID,
        86_400,
        [MAX_COUNT] * MAX_LABELS,
        [255] * MAX_LABELS,
        MAX_LATENCY_100US,
    )
    summary = encode_summary(widest)
    older_summary = encode_summary(widest, kind=MessageKind.SUMMARY)
    assert len(summary) <= len(older_summary) <= MAX_EVENTS_BYTES
    assert decode_message(summary) == decode_message(older_summary) == widest
    assert len(batch) <= MAX_EVENTS_BYTES
    assert decode_message(batch).seq == MAX_UINT63  # type: ignore[union-attr]


# -- summaries from events ------------------------------------------------------------------


def test_summarize_counts_and_rounds_means_half_up() -> None:
    """Counts per label, mean score per label and mean latency, rounded half up."""
    events = [Event(T0, 0, 10, 100), Event(T0 + 10, 0, 11, 101), Event(T0 + 20, 2, 255, 50)]
    summary = summarize(events, seq=4, t0_ms=T0, model=3, window_s=60)
    assert summary == Summary(4, T0, 3, 60, [2, 0, 1], [11, 0, 255], 84)
    assert summary.total == 3
    assert decode_summary(encode_summary(summary)) == summary


def test_summarize_sizes_lists_to_num_labels() -> None:
    """With num_labels, every label has an entry, even when the window saw none of it."""
    summary = summarize([], seq=1, t0_ms=T0, model=1, window_s=10, num_labels=4)
    assert summary.counts == [0, 0, 0, 0] and summary.mean_latency_100us == 0
    with pytest.raises(ProtocolError):
        summarize([Event(T0, 4, 0, 0)], seq=1, t0_ms=T0, model=1, window_s=10, num_labels=4)


@pytest.mark.parametrize("t_ms", [T0 - 1, T0 + 10_000])
def test_summarize_refuses_events_outside_the_window(t_ms: int) -> None:
    """The window is [t0, t0 + window_s): events outside it are refused, not dropped."""
    with pytest.raises(ProtocolError) as caught:
        summarize([Event(t_ms, 0, 0, 0)], seq=1, t0_ms=T0, model=1, window_s=10)
    assert caught.value.reason is Reason.VALUE_OUT_OF_RANGE


# -- size on the wire -----------------------------------------------------------------------


def test_bytes_per_event_on_the_wire() -> None:
    """At 32 events per batch, payload plus ~30 bytes of MQTT framing stays within 6 B/event.

    Prints the figures at 1, 8, 32 and 128 events per batch (run with ``-s`` to see them).
    """
    seeds = range(20)
    for size in (1, 8, 32, 128):
        streams = [realistic_stream(size, s, epoch_ms=T0) for s in seeds]
        # Numbered as devices number them: from the first event's time.
        payloads = [encode_batch(EventBatch.of(events[0].t_ms, 17, events)) for events in streams]
        jsons = [naive_json(decode_batch(p)) for p in payloads]  # type: ignore[arg-type]
        worst = max(len(p) for p in payloads)
        mean = sum(len(p) for p in payloads) / len(payloads)
        ratio = sum(map(len, jsons)) / sum(map(len, payloads))
        print(
            f"batch {size:>3}: payload {mean / size:6.2f} B/event, with framing "
            f"{(mean + MQTT_FRAMING) / size:6.2f} B/event, JSON/CBOR payload {ratio:5.1f}x"
        )
        if size == 32:
            assert (worst + MQTT_FRAMING) / size <= 6.0
            assert ratio >= 20


@pytest.mark.parametrize("values", [[10, 265], [100, 300, 120], [256, 1]])
def test_a_byte_wide_column_past_its_maximum_is_refused(values: list[int]) -> None:
    """Values a byte each above a base: the largest one decides, as for any width."""
    from device_sdk.protocol.packing import check_column, pack_column

    data = pack_column(values)
    column, end = check_column(data, 0, len(values), "scores", max(values), whole=True)
    assert (column.width, end) == (8, len(data))  # at its own maximum: accepted
    with pytest.raises(ProtocolError) as refused:
        check_column(data, 0, len(values), "scores", 255, whole=True)
    assert refused.value.reason is Reason.VALUE_OUT_OF_RANGE
