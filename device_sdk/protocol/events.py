"""Encode and decode what devices publish on ``fleet/v1/{uid}/events``: batches and summaries.

Four wire forms share the topic, told apart by their first element (CDDL in ``CDDL.md``)::

    batch2   = [2, seq_minus_t0, t0, model, n, columns]                  ; what encoders send
    summary2 = [3, seq_minus_t0, t0, model, window_s, counts, mean_scores, mean_latency]  ; same
    batch    = [0, seq, t0, model, n, deltas, labels, scores, latencies]  ; older devices
    summary  = [1, seq, t0, model, window_s, counts, mean_scores, mean_latency]  ; older devices

Every kind starts with the same four items: kind, sequence, ``t0``, model. ``seq`` is the
per-device dedupe key; kinds 2 and 3 send it as ``seq - t0``, a CBOR int: devices number their
messages from the first event's time (a summary: its window's start), ``seq = max(t0, previous
seq + 1)``, so that is 0, one byte instead of the nine of a unix-ms number. Decoders accept all
four kinds and give the same objects for a kind and its older form; the encoders write kinds 2
and 3 unless asked for 0 or 1.

A batch stores its events as four columns: ``deltas`` (``n - 1`` values, ms from the previous
event; the first event is at ``t0``), ``labels``, ``scores`` and ``latencies`` (``n`` each).
Each column is packed by frame of reference (bit width, minimum, then each value minus the
minimum in that many bits; ``packing.py`` describes the format). Kind 0 sends each column as
its own byte string; kind 2 sends the four back to back in one byte string (the decoder checks
that they fill it exactly). On a realistic stream kind 2 costs about 4.4 bytes per event at 32
events per batch, against 6.4 for varint and byte columns and 9.1 for CBOR arrays (see
``CDDL.md``). A summary sends per-label counts and mean scores over a window instead of the
events: with ``seq - t0``, kind 3 is 8 bytes shorter than kind 1.

Decoding is split for the server, which takes thousands of batches a second:
``decode_message_packed`` checks a message completely but leaves its columns packed
(``PackedBatch``), and ``unpack_batches`` unpacks the columns of many batches at once with
numpy. ``decode_message`` gives the same content as ``Event`` objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate, pairwise
from typing import NamedTuple

import cbor2
import numpy as np

from device_sdk.protocol.limits import (
    MAX_COUNT,
    MAX_DELTA_MS,
    MAX_EVENTS_BYTES,
    MAX_EVENTS_PER_BATCH,
    MAX_LABELS,
    MAX_LATENCY_100US,
    MAX_MODEL_ID,
    MAX_SCORE,
    MAX_T0_MS,
    MAX_UINT63,
    MAX_WINDOW_S,
    MIN_T0_MS,
    coerce_uint,
    loads_bounded,
    wire_array,
    wire_bytes,
    wire_uint,
)
from device_sdk.protocol.packing import (
    Int64s,
    PackedColumn,
    check_column,
    pack_column,
    unpack_column,
    unpack_columns,
)
from device_sdk.protocol.reasons import ProtocolError, Reason

__all__ = [
    "Event",
    "EventBatch",
    "EventColumns",
    "MessageKind",
    "PackedBatch",
    "PackedColumn",
    "Summary",
    "decode_batch",
    "decode_message",
    "decode_message_packed",
    "decode_summary",
    "encode_batch",
    "encode_summary",
    "summarize",
    "unpack_batches",
]

class MessageKind(IntEnum):
    """Say what a message on the events topic is. Wire values: never renumber."""

    BATCH = 0  # four byte-string columns, full seq: sent by older devices, still accepted
    SUMMARY = 1  # full seq: sent by older devices, still accepted
    BATCH2 = 2  # seq - t0, the four columns in one byte string: what encoders send
    SUMMARY2 = 3  # seq - t0, otherwise as SUMMARY: what encoders send


_ITEMS = {MessageKind.BATCH: 9, MessageKind.SUMMARY: 8, MessageKind.BATCH2: 6,
          MessageKind.SUMMARY2: 8}
_SUMMARIES = (MessageKind.SUMMARY, MessageKind.SUMMARY2)
_KINDS = frozenset(int(k) for k in MessageKind)  # per message, a tuple of members cost ~2 µs
_SEQ_MINUS_T0 = (MessageKind.BATCH2, MessageKind.SUMMARY2)  # the others send the whole seq


@dataclass(frozen=True, slots=True)
class Event:
    """One inference result: when, which class, how sure, and how long it took."""

    t_ms: int  # unix time in milliseconds
    label: int  # class index, < MAX_LABELS
    score: int  # top-1 confidence quantized to 0..255
    latency_100us: int  # inference time in units of 100 µs


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Consecutive events of one device running one model; ``seq`` is the dedupe key.

    ``t0_ms`` is the time of the first event; the encoder refuses a batch where they differ.
    """

    seq: int
    t0_ms: int
    model: int
    events: list[Event]

    @classmethod
    def of(cls, seq: int, model: int, events: Sequence[Event]) -> EventBatch:
        """Build a batch whose ``t0_ms`` is its first event's time."""
        if not events:
            raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, "a batch holds at least one event")
        return cls(seq, events[0].t_ms, model, list(events))


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """An event batch checked as fully as ``decode_batch`` does, with its columns still packed.

    Unpacking cannot fail: every value is known to be in range. ``batch()`` unpacks one batch;
    ``unpack_batches`` unpacks many at once, which is how the server ingests them.
    """

    seq: int
    t0_ms: int
    model: int
    count: int  # events
    deltas: PackedColumn  # count - 1 values
    labels: PackedColumn
    scores: PackedColumn
    latencies: PackedColumn

    @classmethod
    def of(cls, batch: EventBatch) -> PackedBatch:
        """Pack a batch, refusing what the encoder refuses."""
        packed = decode_message_packed(encode_batch(batch))
        assert isinstance(packed, PackedBatch)
        return packed

    def batch(self) -> EventBatch:
        """Unpack into ``Event`` objects."""
        times = list(accumulate(unpack_column(self.deltas, self.count - 1), initial=self.t0_ms))
        columns = (times, *(unpack_column(c, self.count)
                            for c in (self.labels, self.scores, self.latencies)))
        events = [Event(*fields) for fields in zip(*columns, strict=True)]
        return EventBatch(self.seq, self.t0_ms, self.model, events)


class EventColumns(NamedTuple):
    """The events of many batches, batch after batch, one int64 array per column."""

    counts: Int64s  # events per batch
    times: Int64s  # unix ms
    labels: Int64s
    scores: Int64s
    latencies: Int64s  # 100 µs units


@dataclass(frozen=True, slots=True)
class Summary:
    """Per-label counts and mean scores over one window, sent instead of the events."""

    seq: int
    t0_ms: int  # start of the window, unix ms
    model: int
    window_s: int
    counts: list[int]  # index = label
    mean_scores: list[int]  # index = label; 0 where the count is 0
    mean_latency_100us: int  # over every event of the window; 0 when there were none

    @property
    def total(self) -> int:
        """Return how many events the window held."""
        return sum(self.counts)


# -- encoding -------------------------------------------------------------------------------


def encode_batch(batch: EventBatch, *, kind: MessageKind = MessageKind.BATCH2) -> bytes:
    """Encode a batch of 1..MAX_EVENTS_PER_BATCH events, refusing what a decoder would refuse.

    ``kind`` is BATCH2 (what devices send) or BATCH, the form of older devices, which the
    decoders still accept: kept to test them and to measure one form against the other.
    """
    if kind not in (MessageKind.BATCH, MessageKind.BATCH2):
        raise ValueError(f"kind: {kind!r} is not a batch kind")
    seq = coerce_uint(batch.seq, "seq", MAX_UINT63)
    t0 = coerce_uint(batch.t0_ms, "t0", MAX_T0_MS, minimum=MIN_T0_MS)
    model = coerce_uint(batch.model, "model", MAX_MODEL_ID)
    count = len(batch.events)
    if not 1 <= count <= MAX_EVENTS_PER_BATCH:
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"n: {count} events")
    times = [coerce_uint(e.t_ms, "t_ms", MAX_T0_MS, minimum=MIN_T0_MS) for e in batch.events]
    if times[0] != t0:
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, "t0 differs from the first event's time")
    # A negative delta (events out of order) fails the range check as a "minimum 0" violation.
    deltas = [coerce_uint(b - a, "delta", MAX_DELTA_MS) for a, b in pairwise(times)]
    labels = [coerce_uint(e.label, "label", MAX_LABELS - 1) for e in batch.events]
    scores = [coerce_uint(e.score, "score", MAX_SCORE) for e in batch.events]
    latencies = [coerce_uint(e.latency_100us, "latency", MAX_LATENCY_100US) for e in batch.events]
    columns = [pack_column(deltas), pack_column(labels), pack_column(scores),
               pack_column(latencies)]
    if kind == MessageKind.BATCH2:  # the four in one byte string
        columns = [b"".join(columns)]
    return cbor2.dumps([*_header(kind, seq, t0, model), count, *columns])


def encode_summary(summary: Summary, *, kind: MessageKind = MessageKind.SUMMARY2) -> bytes:
    """Encode a window summary, refusing what a decoder would refuse.

    ``kind`` is SUMMARY2 (what devices send) or SUMMARY, the form of older devices, which the
    decoders still accept: kept to test them and to measure one form against the other.
    """
    if kind not in _SUMMARIES:
        raise ValueError(f"kind: {kind!r} is not a summary kind")
    seq = coerce_uint(summary.seq, "seq", MAX_UINT63)
    t0 = coerce_uint(summary.t0_ms, "t0", MAX_T0_MS, minimum=MIN_T0_MS)
    model = coerce_uint(summary.model, "model", MAX_MODEL_ID)
    window = coerce_uint(summary.window_s, "window_s", MAX_WINDOW_S, minimum=1)
    if len(summary.counts) != len(summary.mean_scores):
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, "counts and mean_scores differ in length")
    if len(summary.counts) > MAX_LABELS:
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{len(summary.counts)} labels")
    counts = [coerce_uint(c, "count", MAX_COUNT) for c in summary.counts]
    means = [coerce_uint(s, "mean_score", MAX_SCORE) for s in summary.mean_scores]
    latency = coerce_uint(summary.mean_latency_100us, "mean_latency", MAX_LATENCY_100US)
    return cbor2.dumps([*_header(kind, seq, t0, model), window, counts, means, latency])


def _header(kind: MessageKind, seq: int, t0: int, model: int) -> list[int]:
    """Return the four items every kind starts with: kind, seq (kinds 2, 3: seq - t0), t0, model.

    The arguments are checked already: both in range, ``seq - t0`` needs no further check.
    """
    return [int(kind), seq - t0 if kind in _SEQ_MINUS_T0 else seq, t0, model]


def summarize(
    events: Iterable[Event],
    *,
    seq: int,
    t0_ms: int,
    model: int,
    window_s: int,
    num_labels: int | None = None,
) -> Summary:
    """Summarize the events of the window ``[t0_ms, t0_ms + window_s * 1000)``.

    The per-label lists have ``num_labels`` entries, or max label + 1 when it is None. An
    event outside the window, or a label at or past ``num_labels``, is refused rather than
    dropped: the caller chose the window and would otherwise lose events without noticing.
    Means round half up to whole units.
    """
    t0 = coerce_uint(t0_ms, "t0", MAX_T0_MS, minimum=MIN_T0_MS)
    window = coerce_uint(window_s, "window_s", MAX_WINDOW_S, minimum=1)
    end = t0 + window * 1000
    label_cap = (
        MAX_LABELS if num_labels is None else coerce_uint(num_labels, "num_labels", MAX_LABELS)
    )
    size = 0 if num_labels is None else label_cap
    counts = [0] * size
    score_sums = [0] * size
    latency_sum = 0
    for event in events:
        t_ms = coerce_uint(event.t_ms, "t_ms", MAX_T0_MS)
        if not t0 <= t_ms < end:
            raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"event at {t_ms} is outside the window")
        label = coerce_uint(event.label, "label", label_cap - 1)
        if label >= len(counts):
            grow = label + 1 - len(counts)
            counts += [0] * grow
            score_sums += [0] * grow
        counts[label] += 1
        score_sums[label] += coerce_uint(event.score, "score", MAX_SCORE)
        latency_sum += coerce_uint(event.latency_100us, "latency", MAX_LATENCY_100US)
    means = [_mean(s, c) for s, c in zip(score_sums, counts, strict=True)]
    summary = Summary(seq, t0, model, window, counts, means, _mean(latency_sum, sum(counts)))
    encode_summary(summary)  # validate every field now, not when the device publishes
    return summary


def _mean(total: int, count: int) -> int:
    return (2 * total + count) // (2 * count) if count else 0


# -- decoding -------------------------------------------------------------------------------


def decode_message(payload: bytes) -> EventBatch | Summary:
    """Decode a payload of the events topic; raise ProtocolError and nothing else on refusal."""
    items = _load(payload)
    if items[0] in _SUMMARIES:
        return _summary_from(items)
    return _packed_from(items).batch()


def decode_message_packed(payload: bytes) -> PackedBatch | Summary:
    """Decode like ``decode_message``, leaving a batch's columns packed (see ``unpack_batches``).

    Accepts and refuses exactly what ``decode_message`` does, with the same reasons; it only
    skips the per-value work that the checks do not need.
    """
    items = _load(payload)
    if items[0] in _SUMMARIES:
        return _summary_from(items)
    return _packed_from(items)


def decode_batch(payload: bytes) -> EventBatch:
    """Decode an event batch of either kind, refusing a summary or anything else."""
    items = _load(payload)
    if items[0] in _SUMMARIES:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "not an event batch")
    return _packed_from(items).batch()


def decode_summary(payload: bytes) -> Summary:
    """Decode a window summary of either kind, refusing a batch or anything else."""
    items = _load(payload)
    if items[0] not in _SUMMARIES:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "not a summary")
    return _summary_from(items)


def unpack_batches(batches: Sequence[PackedBatch]) -> EventColumns:
    """Unpack the events of many checked batches at once, vectorized over every value.

    The same values as ``batch()`` of each, at a small fraction of the cost per event.
    """
    counts = np.array([b.count for b in batches], dtype=np.int64)
    t0 = np.array([b.t0_ms for b in batches], dtype=np.int64)
    deltas = unpack_columns([b.deltas for b in batches], counts - 1)
    # Each batch's first event is at t0, the others a delta after the one before: one running
    # sum over every batch's deltas (0 at each first event), less what the batches before
    # contributed, plus t0.
    first = np.cumsum(counts) - counts
    steps = np.zeros(int(counts.sum()), dtype=np.int64)
    later = np.ones(len(steps), dtype=bool)
    later[first] = False
    steps[later] = deltas
    running = np.cumsum(steps)
    times = running + np.repeat(t0 - running[first], counts)
    return EventColumns(counts, times, unpack_columns([b.labels for b in batches], counts),
                        unpack_columns([b.scores for b in batches], counts),
                        unpack_columns([b.latencies for b in batches], counts))


def _load(payload: bytes) -> Sequence[object]:
    value = loads_bounded(payload, cap=MAX_EVENTS_BYTES)
    items = wire_array(value, "message")
    if not items:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "message: empty array")
    kind = wire_uint(items[0], "kind", MAX_UINT63)
    if kind not in _KINDS:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"kind: unknown message kind {kind}")
    return items


def _header_from(items: Sequence[object], name: str) -> tuple[int, int, int]:
    """Check the arity of a message of known kind and the three items after the kind.

    Return seq, t0 and model. Kinds 0 and 1 carry ``seq``; kinds 2 and 3 carry ``seq - t0``,
    any CBOR int, and ``t0 + seq_minus_t0`` must be in the range of their ``seq``.
    """
    wire_array(items, name, length=_ITEMS[items[0]])  # type: ignore[index]
    if items[0] in _SEQ_MINUS_T0:
        offset = items[1]
        if type(offset) is not int:
            raise ProtocolError(Reason.SCHEMA_MISMATCH, "seq_minus_t0: expected int")
        t0 = wire_uint(items[2], "t0", MAX_T0_MS, minimum=MIN_T0_MS)
        # The same range as kind 0's seq, whatever the offset: huge or negative ints included.
        seq = t0 + offset
        if not 0 <= seq <= MAX_UINT63:
            raise ProtocolError(
                Reason.VALUE_OUT_OF_RANGE, f"seq: t0 + seq_minus_t0 = {seq} not in 0..{MAX_UINT63}"
            )
    else:
        seq = wire_uint(items[1], "seq", MAX_UINT63)
        t0 = wire_uint(items[2], "t0", MAX_T0_MS, minimum=MIN_T0_MS)
    return seq, t0, wire_uint(items[3], "model", MAX_MODEL_ID)


def _packed_from(items: Sequence[object]) -> PackedBatch:
    """Check a batch of either kind; ``items[0]`` is BATCH or BATCH2."""
    seq, t0, model = _header_from(items, "batch")
    count = wire_uint(items[4], "n", MAX_EVENTS_PER_BATCH, minimum=1)
    if items[0] == MessageKind.BATCH:  # a byte string per column, which it must fill
        deltas = _whole_column(items[5], count - 1, "deltas", MAX_DELTA_MS)
        labels = _whole_column(items[6], count, "labels", MAX_LABELS - 1)
        scores = _whole_column(items[7], count, "scores", MAX_SCORE)
        latencies = _whole_column(items[8], count, "latencies", MAX_LATENCY_100US)
    else:  # the four back to back in one byte string, which they must fill
        data = wire_bytes(items[5], "columns", MAX_EVENTS_BYTES)
        deltas, end = check_column(data, 0, count - 1, "deltas", MAX_DELTA_MS)
        labels, end = check_column(data, end, count, "labels", MAX_LABELS - 1)
        scores, end = check_column(data, end, count, "scores", MAX_SCORE)
        latencies, end = check_column(data, end, count, "latencies", MAX_LATENCY_100US)
        if end != len(data):
            raise ProtocolError(
                Reason.VALUE_OUT_OF_RANGE, f"columns: {len(data) - end} bytes after the last column"
            )
    # The last event's time, bounded first by the widest deltas the column could hold.
    widest = deltas.base + (1 << deltas.width) - 1
    if (t0 + (count - 1) * widest > MAX_T0_MS
            and t0 + sum(unpack_column(deltas, count - 1)) > MAX_T0_MS):
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, "last event is past the time range")
    return PackedBatch(seq, t0, model, count, deltas, labels, scores, latencies)


def _summary_from(items: Sequence[object]) -> Summary:
    """Check a summary of either kind; ``items[0]`` is SUMMARY or SUMMARY2."""
    seq, t0, model = _header_from(items, "summary")
    window = wire_uint(items[4], "window_s", MAX_WINDOW_S, minimum=1)
    raw_counts = wire_array(items[5], "counts", max_length=MAX_LABELS)
    raw_means = wire_array(items[6], "mean_scores", max_length=MAX_LABELS)
    counts = [wire_uint(c, "count", MAX_COUNT) for c in raw_counts]
    means = [wire_uint(s, "mean_score", MAX_SCORE) for s in raw_means]
    if len(counts) != len(means):
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, "counts and mean_scores differ in length")
    latency = wire_uint(items[7], "mean_latency", MAX_LATENCY_100US)
    return Summary(seq, t0, model, window, counts, means, latency)


def _whole_column(column: object, count: int, field: str, maximum: int) -> PackedColumn:
    """Check a kind-0 column: a byte string holding exactly one packed column."""
    data = wire_bytes(column, field, MAX_EVENTS_BYTES)
    return check_column(data, 0, count, field, maximum, whole=True)[0]
