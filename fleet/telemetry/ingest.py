"""Decode device event messages and store them exactly once, in batches.

``decode_event_message`` turns one MQTT message into an accepted batch or a rejection (never
an exception). ``store_batches`` writes many accepted batches in one transaction: the
(device, seq) unique key on IngestedBatch decides which are new, so a redelivered message
(worker killed before its PUBACK, broker restart) is counted once. Dedupe is per batch, not
per event row, which keeps the raw event table free of unique indexes and fast to COPY into.

Throughput: on PostgreSQL every write of a call is one statement per table (keys and rollups
as arrays through ``unnest``, events as one binary COPY), so the cost grows with rows, not
round trips; SQLite, in process, takes ``executemany``. Timestamps are built from integer
milliseconds without datetime objects on the hot path.
"""

from __future__ import annotations

import logging
import struct
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TypeVar

from django.db import connection, transaction

from device_sdk.protocol.events import EventBatch, MessageKind, Summary, decode_message
from device_sdk.protocol.reasons import ProtocolError, Reason
from fleet.telemetry.directory import DeviceDirectory, KnownDevice
from fleet.telemetry.models import LATENCY_BOUNDS_100US, DeadLetter

log = logging.getLogger(__name__)
T = TypeVar("T")
DEAD_LETTER_KEEP_BYTES = 1024


@dataclass(frozen=True)
class Accepted:
    """A decoded message from a known device, ready to store."""

    device_id: int
    model_version_id: int
    message: EventBatch | Summary


@dataclass(frozen=True)
class Rejected:
    """A refused message with its wire reason."""

    topic: str
    uid: str
    reason: Reason
    detail: str
    payload: bytes


@dataclass
class StoreResult:
    """What one ``store_batches`` call did."""

    batches: int = 0
    events: int = 0
    duplicates: int = 0
    devices: set[int] = field(default_factory=set)


def decode_from_device(
    topic: str, uid: str, payload: bytes, decode: Callable[[bytes], T],
    directory: DeviceDirectory,
) -> tuple[T, KnownDevice] | Rejected:
    """Decode a device's message and check the device is enrolled and not revoked.

    Every consumer of device input starts here: the decoder applies the size cap, schema and
    ranges; what fails becomes a ``Rejected`` with its wire reason, never an exception.
    """
    try:
        message = decode(payload)
    except ProtocolError as exc:
        return Rejected(topic, uid, exc.reason, exc.detail, payload)
    device = directory.device(uid)
    if device is None or device.revoked:
        why = "revoked" if device else "not enrolled"
        return Rejected(topic, uid, Reason.UNKNOWN_DEVICE, f"device {uid} {why}", payload)
    return message, device


def decode_event_message(
    topic: str, uid: str, payload: bytes, directory: DeviceDirectory
) -> Accepted | Rejected:
    """Check and decode one message from ``fleet/v1/{uid}/events``."""
    outcome = decode_from_device(topic, uid, payload, decode_message, directory)
    if isinstance(outcome, Rejected):
        return outcome
    message, device = outcome
    return Accepted(device.id, directory.model_version_of(message.model), message)


def record_rejections(rejections: list[Rejected]) -> None:
    """Keep refused messages (truncated) in the dead-letter table."""
    DeadLetter.objects.bulk_create([
        DeadLetter(topic=r.topic[:200], device_uid=r.uid[:64], reason=r.reason.name,
                   detail=r.detail[:300], size=len(r.payload),
                   payload=r.payload[:DEAD_LETTER_KEEP_BYTES])
        for r in rejections
    ])


_EVENT_COLUMNS = "device_id, model_version_id, seq, ts, label, score, latency_100us"
_ROLLUP_SUMS = ("count", "score_sum", "latency_sum", "lat_le_1ms", "lat_le_5ms", "lat_le_20ms",
                "lat_le_100ms", "lat_gt_100ms")
# Binary COPY (PostgreSQL's documented wire format): a signature and two empty int32 header
# fields, then per row the field count and each field as int32 length + big-endian value, in
# telemetry_event's column types (bigint, integer, bigint, timestamptz, smallint x2, integer).
# A timestamptz is microseconds since 2000-01-01 UTC.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_EVENT_TUPLE = struct.Struct(">h iq ii iq iq ih ih ii")
_PG_EPOCH_US = 946_684_800_000_000

Rollups = dict[tuple[int, int, int, int], list[int]]  # (device, version, minute s, label)


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _db_dt(seconds: float) -> object:
    return connection.ops.adapt_datetimefield_value(_dt(seconds))


@lru_cache(maxsize=128)
def _day_text(day: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(days=day)).strftime("%Y-%m-%d ")


def _sqlite_ts(t_ms: int) -> str:
    """Return what Django stores in SQLite for this UTC instant (``str`` of a naive datetime)."""
    seconds, ms = divmod(t_ms, 1000)
    day, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{_day_text(day)}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{ms:03d}000" if ms else text


def _pg_array(values: Iterable[int]) -> str:
    """Return integers as a PostgreSQL array literal (far cheaper than adapting a list)."""
    return "{" + ",".join(map(str, values)) + "}"


def store_batches(accepted: list[Accepted], received_at: datetime) -> StoreResult:
    """Store accepted messages exactly once, with their rollups and devices' last seen."""
    result = StoreResult()
    if not accepted:
        return result
    with transaction.atomic():
        new = _claim_new(accepted, received_at)
        result.duplicates = len(accepted) - len(new)
        if not new:
            return result
        event_rows: list[tuple[int, int, int, int, int, int, int]] = []
        rollups: Rollups = {}
        last_seen: dict[int, int] = {}
        for item in new:
            msg = item.message
            if isinstance(msg, EventBatch):
                _expand_batch(item, event_rows, rollups)
                end_ms = msg.events[-1].t_ms
            else:
                _expand_summary(item, rollups)
                end_ms = msg.t0_ms + msg.window_s * 1000
            if end_ms > last_seen.get(item.device_id, 0):
                last_seen[item.device_id] = end_ms
            result.batches += 1
        _insert_events(event_rows)
        _upsert_rollups(rollups)
        _touch_devices(last_seen)
        result.events = len(event_rows) + sum(
            m.message.total for m in new if isinstance(m.message, Summary)
        )
        result.devices = set(last_seen)
    return result


def _claim_new(accepted: list[Accepted], received_at: datetime) -> list[Accepted]:
    """Insert the dedupe keys; return the messages whose key was not there yet."""
    rows = []
    for a in accepted:
        m = a.message
        if isinstance(m, EventBatch):
            rows.append((a.device_id, m.seq, int(MessageKind.BATCH), a.model_version_id,
                         m.model, m.t0_ms, len(m.events)))
        else:
            rows.append((a.device_id, m.seq, int(MessageKind.SUMMARY), a.model_version_id,
                         m.model, m.t0_ms, m.total))
    # Key order: concurrent workers wait on each other's uncommitted keys in one order only.
    rows.sort()
    claimed: set[tuple[int, int]] = set()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "INSERT INTO telemetry_ingestedbatch (device_id, seq, kind, model_version_id,"
                " package_id, t0, event_count, received_at)"
                " SELECT d, s, k, mv, p, 'epoch'::timestamptz + t * interval '1 millisecond',"
                " n, %s FROM unnest(%s::bigint[], %s::bigint[], %s::smallint[], %s::integer[],"
                " %s::integer[], %s::bigint[], %s::integer[]) AS u(d, s, k, mv, p, t, n)"
                " ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq",
                [received_at, *(_pg_array(column) for column in zip(*rows, strict=True))],
            )
            claimed.update((d, s) for d, s in cursor.fetchall())
        else:
            received = connection.ops.adapt_datetimefield_value(received_at)
            for start in range(0, len(rows), 100):
                chunk = rows[start:start + 100]
                values = ",".join(["(%s,%s,%s,%s,%s,%s,%s,%s)"] * len(chunk))
                cursor.execute(
                    "INSERT INTO telemetry_ingestedbatch (device_id, seq, kind,"
                    " model_version_id, package_id, t0, event_count, received_at) VALUES "
                    + values + " ON CONFLICT (device_id, seq) DO NOTHING"
                    " RETURNING device_id, seq",
                    [v for d, s, k, mv, p, t, n in chunk
                     for v in (d, s, k, mv, p, _sqlite_ts(t), n, received)],
                )
                claimed.update((d, s) for d, s in cursor.fetchall())
    # Two copies of one (device, seq) inside one call: keep the first only.
    new, seen = [], set()
    for a in accepted:
        key = (a.device_id, a.message.seq)
        if key in claimed and key not in seen:
            seen.add(key)
            new.append(a)
    return new


def _expand_batch(item: Accepted, rows: list[tuple[int, int, int, int, int, int, int]],
                  rollups: Rollups) -> None:
    msg = item.message
    assert isinstance(msg, EventBatch)
    device, mv, seq = item.device_id, item.model_version_id, msg.seq
    append, get = rows.append, rollups.get
    for e in msg.events:
        t, label, score, latency = e.t_ms, e.label, e.score, e.latency_100us
        append((device, mv, seq, t, label, score, latency))
        key = (device, mv, t // 60_000 * 60, label)
        acc = get(key)
        if acc is None:
            acc = rollups[key] = [0] * 8
        acc[0] += 1
        acc[1] += score
        acc[2] += latency
        acc[3 + bisect_left(LATENCY_BOUNDS_100US, latency)] += 1


def _expand_summary(item: Accepted, rollups: Rollups) -> None:
    """Fold a summary into the rollup of its window's first minute.

    A summary carries no per-event latencies: its mean latency stands for every event of the
    window in the histogram.
    """
    msg = item.message
    assert isinstance(msg, Summary)
    hist = 3 + bisect_left(LATENCY_BOUNDS_100US, msg.mean_latency_100us)
    minute = msg.t0_ms // 60_000 * 60
    for label, count in enumerate(msg.counts):
        if count:
            key = (item.device_id, item.model_version_id, minute, label)
            acc = rollups.get(key)
            if acc is None:
                acc = rollups[key] = [0] * 8
            acc[0] += count
            acc[1] += msg.mean_scores[label] * count
            acc[2] += msg.mean_latency_100us * count
            acc[hist] += count


def _insert_events(rows: list[tuple[int, int, int, int, int, int, int]]) -> None:
    if not rows:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            pack, epoch = _EVENT_TUPLE.pack, _PG_EPOCH_US
            data = b"".join([
                _COPY_HEADER,
                *[pack(7, 8, d, 4, mv, 8, seq, 8, t * 1000 - epoch, 2, label, 2, score, 4, lat)
                  for d, mv, seq, t, label, score, lat in rows],
                _COPY_TRAILER,
            ])
            with cursor.copy(
                f"COPY telemetry_event ({_EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.write(data)
        else:
            cursor.executemany(
                f"INSERT INTO telemetry_event ({_EVENT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                [(d, mv, seq, _sqlite_ts(t), label, score, lat)
                 for d, mv, seq, t, label, score, lat in rows],
            )


def _upsert_rollups(rollups: Rollups) -> None:
    if not rollups:
        return
    updates = ", ".join(f"{c} = telemetry_rollup.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
    conflict = " ON CONFLICT (device_id, model_version_id, bucket, label) DO UPDATE SET "
    # Sorted keys: concurrent workers take row locks in the same order and cannot deadlock.
    cells = sorted(rollups.items())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            names = ", ".join(f"s{i}" for i in range(len(_ROLLUP_SUMS)))
            columns = [_pg_array(c) for c in zip(*((*k, *s) for k, s in cells), strict=True)]
            cursor.execute(
                "INSERT INTO telemetry_rollup (device_id, model_version_id, bucket, label, "
                + ", ".join(_ROLLUP_SUMS) + ") SELECT d, mv,"
                " 'epoch'::timestamptz + b * interval '1 second', l, " + names
                + " FROM unnest(%s::bigint[], %s::integer[], %s::bigint[], %s::smallint[], "
                + ", ".join(["%s::bigint[]"] * len(_ROLLUP_SUMS)) + ") AS u(d, mv, b, l, "
                + names + ")" + conflict + updates,
                columns,
            )
        else:
            cursor.executemany(
                "INSERT INTO telemetry_rollup (device_id, model_version_id, bucket, label, "
                + ", ".join(_ROLLUP_SUMS) + ") VALUES (" + ",".join(["%s"] * 12) + ")"
                + conflict + updates,
                [(d, mv, _sqlite_ts(minute * 1000), label, *sums)
                 for (d, mv, minute, label), sums in cells],
            )


def _touch_devices(last_seen: dict[int, int]) -> None:
    with connection.cursor() as cursor:
        cursor.executemany(
            "UPDATE devices_device SET last_seen = %s, first_seen = COALESCE(first_seen, %s)"
            " WHERE id = %s AND (last_seen IS NULL OR last_seen < %s)",
            [(_db_dt(t / 1000), _db_dt(t / 1000), d, _db_dt(t / 1000))
             for d, t in sorted(last_seen.items())],
        )
