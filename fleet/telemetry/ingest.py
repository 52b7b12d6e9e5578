"""Decode device event messages and store them exactly once, in batches.

``decode_event_message`` turns one MQTT message into an accepted batch or a rejection (never
an exception). ``store_batches`` writes many accepted batches in one transaction: the
(device, seq) unique key on IngestedBatch decides which are new, so a redelivered message
(worker killed before its PUBACK, broker restart) is counted once. Dedupe is per batch, not
per event row, which keeps the raw event table free of unique indexes and fast to COPY into.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import connection, transaction

from device_sdk.protocol.events import EventBatch, MessageKind, Summary, decode_message
from device_sdk.protocol.reasons import ProtocolError, Reason
from fleet.telemetry.directory import DeviceDirectory
from fleet.telemetry.models import LATENCY_BOUNDS_100US, DeadLetter

log = logging.getLogger(__name__)
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


def decode_event_message(
    topic: str, uid: str, payload: bytes, directory: DeviceDirectory
) -> Accepted | Rejected:
    """Check and decode one message from ``fleet/v1/{uid}/events``."""
    try:
        message = decode_message(payload)  # size cap first, then schema and ranges
    except ProtocolError as exc:
        return Rejected(topic, uid, exc.reason, exc.detail, payload)
    device = directory.device(uid)
    if device is None or device.revoked:
        why = "revoked" if device else "not enrolled"
        return Rejected(topic, uid, Reason.UNKNOWN_DEVICE, f"device {uid} {why}", payload)
    return Accepted(device.id, directory.model_version_of(message.model), message)


def record_rejections(rejections: list[Rejected]) -> None:
    """Keep refused messages (truncated) in the dead-letter table."""
    DeadLetter.objects.bulk_create([
        DeadLetter(topic=r.topic[:200], device_uid=r.uid[:64], reason=r.reason.name,
                   detail=r.detail[:300], size=len(r.payload),
                   payload=r.payload[:DEAD_LETTER_KEEP_BYTES])
        for r in rejections
    ])


def _minute(t_ms: int) -> int:
    return t_ms // 60_000 * 60


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _db_dt(seconds: float) -> object:
    return connection.ops.adapt_datetimefield_value(_dt(seconds))


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
        event_rows: list[tuple] = []
        rollups: dict[tuple[int, int, int, int], list[int]] = defaultdict(lambda: [0] * 8)
        last_seen: dict[int, int] = {}
        for item in new:
            msg = item.message
            if isinstance(msg, EventBatch):
                _expand_batch(item, event_rows, rollups)
                end_ms = msg.events[-1].t_ms
            else:
                _expand_summary(item, rollups)
                end_ms = msg.t0_ms + msg.window_s * 1000
            last_seen[item.device_id] = max(last_seen.get(item.device_id, 0), end_ms)
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
    received = connection.ops.adapt_datetimefield_value(received_at)
    rows = []
    for a in accepted:
        m = a.message
        kind = MessageKind.BATCH if isinstance(m, EventBatch) else MessageKind.SUMMARY
        count = len(m.events) if isinstance(m, EventBatch) else m.total
        rows.append((a.device_id, m.seq, int(kind), a.model_version_id, m.model,
                     _db_dt(m.t0_ms / 1000), count, received))
    claimed: set[tuple[int, int]] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 200):
            chunk = rows[start:start + 200]
            values = ",".join(["(%s,%s,%s,%s,%s,%s,%s,%s)"] * len(chunk))
            cursor.execute(
                "INSERT INTO telemetry_ingestedbatch (device_id, seq, kind, model_version_id,"
                " package_id, t0, event_count, received_at) VALUES " + values +
                " ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq",
                [v for row in chunk for v in row],
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


def _expand_batch(item: Accepted, rows: list[tuple], rollups: dict) -> None:
    msg = item.message
    device, mv, seq = item.device_id, item.model_version_id, msg.seq
    for e in msg.events:
        rows.append((device, mv, seq, e.t_ms, e.label, e.score, e.latency_100us))
        acc = rollups[(device, mv, _minute(e.t_ms), e.label)]
        acc[0] += 1
        acc[1] += e.score
        acc[2] += e.latency_100us
        acc[3 + bisect_left(LATENCY_BOUNDS_100US, e.latency_100us)] += 1


def _expand_summary(item: Accepted, rollups: dict) -> None:
    """Fold a summary into the rollup of its window's first minute.

    A summary carries no per-event latencies: its mean latency stands for every event of the
    window in the histogram.
    """
    msg = item.message
    hist = 3 + bisect_left(LATENCY_BOUNDS_100US, msg.mean_latency_100us)
    for label, count in enumerate(msg.counts):
        if count:
            acc = rollups[(item.device_id, item.model_version_id, _minute(msg.t0_ms), label)]
            acc[0] += count
            acc[1] += msg.mean_scores[label] * count
            acc[2] += msg.mean_latency_100us * count
            acc[hist] += count


_EVENT_COLUMNS = "device_id, model_version_id, seq, ts, label, score, latency_100us"


def _insert_events(rows: list[tuple]) -> None:
    if not rows:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.copy(f"COPY telemetry_event ({_EVENT_COLUMNS}) FROM STDIN") as copy:
                for d, mv, seq, t_ms, label, score, lat in rows:
                    copy.write_row((d, mv, seq, _dt(t_ms / 1000), label, score, lat))
        else:
            cursor.executemany(
                f"INSERT INTO telemetry_event ({_EVENT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                [(d, mv, seq, _db_dt(t / 1000), label, score, lat)
                 for d, mv, seq, t, label, score, lat in rows],
            )


_ROLLUP_SUMS = ("count", "score_sum", "latency_sum", "lat_le_1ms", "lat_le_5ms", "lat_le_20ms",
                "lat_le_100ms", "lat_gt_100ms")


def _upsert_rollups(rollups: dict[tuple[int, int, int, int], list[int]]) -> None:
    if not rollups:
        return
    updates = ", ".join(f"{c} = telemetry_rollup.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
    sql = (
        "INSERT INTO telemetry_rollup (device_id, model_version_id, bucket, label, "
        + ", ".join(_ROLLUP_SUMS) + ") VALUES (" + ",".join(["%s"] * 12) + ")"
        " ON CONFLICT (device_id, model_version_id, bucket, label) DO UPDATE SET " + updates
    )
    # Sorted keys: concurrent workers take row locks in the same order and cannot deadlock.
    params = [(d, mv, _db_dt(minute), label, *sums)
              for (d, mv, minute, label), sums in sorted(rollups.items())]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _touch_devices(last_seen: dict[int, int]) -> None:
    with connection.cursor() as cursor:
        cursor.executemany(
            "UPDATE devices_device SET last_seen = %s, first_seen = COALESCE(first_seen, %s)"
            " WHERE id = %s AND (last_seen IS NULL OR last_seen < %s)",
            [(_db_dt(t / 1000), _db_dt(t / 1000), d, _db_dt(t / 1000))
             for d, t in sorted(last_seen.items())],
        )
