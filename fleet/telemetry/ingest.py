"""Store device event batches exactly once, in batches.

Intake (``fleet.intake``) decodes and checks each message and hands over ``Accepted``
batches. ``store_batches`` writes many accepted batches in one transaction: the
(device, seq) unique key on IngestedBatch decides which are new, so a redelivered message
(worker killed before its PUBACK, broker restart) is counted once. Dedupe is per batch, not
per event row, which keeps the raw event table free of unique indexes and fast to COPY into.

Throughput: on PostgreSQL every write of a call is one statement per table (keys as arrays
through ``unnest``, events as one binary COPY, rollups as a binary COPY into a session's
staging table and one upsert from it), so the cost grows with rows, not round trips; SQLite,
in process, takes ``executemany``. Python loops per message, never per
event: the decoder checks each message but leaves its columns packed (``PackedBatch``), and
the events of a whole call are unpacked, turned into the COPY payload and summed into rollups
with numpy, column by column.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from django.db import connection, transaction
from django.db.models import Q

from device_sdk.protocol.events import (
    EventBatch,
    MessageKind,
    PackedBatch,
    Summary,
    unpack_batches,
)
from fleet.telemetry.models import LATENCY_BOUNDS_100US, IngestedBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    """A decoded message from a known device, ready to store.

    ``digest`` identifies the message's content (intake hashes the payload): a redelivery has
    the same, another batch that reuses the (device, seq) key has not. ``topic``, ``uid`` and
    ``payload`` let a refused one be kept as a dead letter.
    """

    device_id: int
    model_version_id: int
    message: PackedBatch | EventBatch | Summary  # the decoder gives PackedBatch, never EventBatch
    digest: int = 0
    topic: str = ""
    uid: str = ""
    payload: bytes = b""


@dataclass
class StoreResult:
    """What one ``store_batches`` call did."""

    batches: int = 0
    events: int = 0
    duplicates: int = 0
    devices: set[int] = field(default_factory=set)
    reused: list[Accepted] = field(default_factory=list)  # other content under a stored key


_EVENT_COLUMNS = "device_id, model_version_id, seq, ts, label, score, latency_100us"
_ROLLUP_SUMS = ("count", "score_sum", "latency_sum", "lat_le_1ms", "lat_le_5ms", "lat_le_20ms",
                "lat_le_100ms", "lat_gt_100ms")
_ROLLUP_COLUMNS = "device_id, model_version_id, bucket, label, " + ", ".join(_ROLLUP_SUMS)
# Rollup increments are COPYed here, then upserted in one statement: a binary COPY costs a
# fraction of building and parsing twelve array literals. A temporary table belongs to the
# session and is emptied at commit; created "if not exists" in every transaction, since one
# remembered from an earlier transaction may have been rolled back (or the session replaced).
_ROLLUP_STAGE_DDL = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS telemetry_rollup_stage (device_id bigint,"
    " model_version_id integer, bucket timestamptz, label smallint, "
    + ", ".join(f"{c} bigint" for c in _ROLLUP_SUMS) + ") ON COMMIT DELETE ROWS"
)
# Binary COPY (PostgreSQL's documented wire format): a signature and two empty int32 header
# fields, then per row the field count and each field as int32 length + big-endian value.
# A timestamptz is microseconds since 2000-01-01 UTC. See _binary_copy.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000
_LATENCY_BOUNDS = np.array(LATENCY_BOUNDS_100US, dtype=np.int64)

Int64s = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _EventColumns:
    """The raw event rows of one call, batch after batch, one int64 array per column."""

    counts: Int64s  # events per batch
    device: Int64s
    model_version: Int64s
    seq: Int64s
    t_ms: Int64s
    label: Int64s
    score: Int64s
    latency: Int64s

    @classmethod
    def of(cls, items: list[tuple[Accepted, PackedBatch]]) -> _EventColumns:
        """Unpack the batches' events; repeat each batch's keys for its events."""
        unpacked = unpack_batches([b for _, b in items])

        def per_batch(values: list[int]) -> Int64s:
            return np.repeat(np.array(values, dtype=np.int64), unpacked.counts)

        return cls(
            unpacked.counts,
            per_batch([a.device_id for a, _ in items]),
            per_batch([a.model_version_id for a, _ in items]),
            per_batch([b.seq for _, b in items]),
            unpacked.times, unpacked.labels, unpacked.scores, unpacked.latencies,
        )

    @classmethod
    def empty(cls) -> _EventColumns:
        """No events (a call of summaries only)."""
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, none, none, none, none, none, none)

    def last_times(self) -> list[int]:
        """Return the time of each batch's last event, in batch order."""
        return self.t_ms[np.cumsum(self.counts) - 1].tolist()

    def __len__(self) -> int:
        return len(self.t_ms)


@dataclass(frozen=True)
class _RollupCells:
    """Rollup increments per (device, model version, minute, label), sorted by that key."""

    keys: list[Int64s]  # device, model version, bucket (unix s), label
    sums: list[Int64s]  # in _ROLLUP_SUMS order

    def __len__(self) -> int:
        return len(self.keys[0])


def _binary_copy(columns: list[tuple[str, npt.NDArray[np.integer]]]) -> bytes:
    """Return a binary COPY payload of integer columns, given as (numpy type code, values).

    The codes are big-endian and sized like the table's columns (``>i8`` bigint and
    timestamptz, ``>i4`` integer, ``>i2`` smallint). One packed numpy record per row, whose
    length fields are constants, so the payload is built with one fill per column.
    """
    spec = [("fields", ">i2")]
    for i, (code, _) in enumerate(columns):
        spec += [(f"len{i}", ">i4"), (f"v{i}", code)]
    rows = np.empty(len(columns[0][1]), dtype=np.dtype(spec))
    rows["fields"] = len(columns)
    for i, (code, values) in enumerate(columns):
        rows[f"len{i}"] = np.dtype(code).itemsize
        rows[f"v{i}"] = values
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


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


def _event_count(message: PackedBatch | Summary) -> int:
    return message.count if isinstance(message, PackedBatch) else message.total


@dataclass
class StagedBatches:
    """Accepted messages with their rows, rollup cells and COPY payloads computed, no writes.

    ``stage_batches`` builds this off the database's critical path (the worker does it for the
    next batch while the previous one is being stored); ``store_staged`` writes it. Staging
    assumes every message is new; when the dedupe keys say some were stored before (a
    redelivery), ``store_staged`` stages the new ones again.
    """

    accepted: list[Accepted]
    claims: list[tuple[int, int, int, int, int, int, int]]  # sorted dedupe key rows
    events: _EventColumns
    summaries: list[tuple[Accepted, Summary]]
    cells: _RollupCells
    last_seen: dict[int, int]  # device id -> time of its latest event (unix ms)
    event_copy: bytes | None = None  # PostgreSQL binary COPY payloads, when staged for it
    rollup_copy: bytes | None = None

    @property
    def event_count(self) -> int:
        return len(self.events) + sum(s.total for _, s in self.summaries)


def stage_batches(accepted: list[Accepted], *, for_copy: bool | None = None) -> StagedBatches:
    """Compute everything ``store_staged`` writes for these messages (CPU only, no queries).

    ``for_copy``: build PostgreSQL's binary COPY payloads too (default: when the database is
    PostgreSQL).
    """
    accepted = [a if not isinstance(a.message, EventBatch)
                else Accepted(a.device_id, a.model_version_id, PackedBatch.of(a.message))
                for a in accepted]
    batches = [(a, a.message) for a in accepted if isinstance(a.message, PackedBatch)]
    summaries = [(a, a.message) for a in accepted if isinstance(a.message, Summary)]
    events = _EventColumns.of(batches) if batches else _EventColumns.empty()
    last_seen: dict[int, int] = {}
    ends = zip([a.device_id for a, _ in batches], events.last_times(), strict=True)
    for device, end_ms in (*ends, *((a.device_id, s.t0_ms + s.window_s * 1000)
                                    for a, s in summaries)):
        if end_ms > last_seen.get(device, 0):
            last_seen[device] = end_ms
    cells = _rollups(events, summaries)
    staged = StagedBatches(accepted, _claim_rows(accepted), events, summaries, cells, last_seen)
    if for_copy if for_copy is not None else connection.vendor == "postgresql":
        staged.event_copy = _event_copy(events) if len(events) else None
        staged.rollup_copy = _rollup_copy(cells) if len(cells) else None
    return staged


def store_batches(accepted: list[Accepted], received_at: datetime) -> StoreResult:
    """Store accepted messages exactly once, with their rollups and devices' last seen."""
    if not accepted:
        return StoreResult()
    return store_staged(stage_batches(accepted), received_at)


def store_staged(staged: StagedBatches, received_at: datetime) -> StoreResult:
    """Write staged messages exactly once, in one transaction; see ``StagedBatches``."""
    result = StoreResult()
    if not staged.accepted:
        return result
    nested = connection.in_atomic_block
    with transaction.atomic():
        new, result.reused = _claim_new(staged.accepted, staged.claims, received_at)
        result.duplicates = len(staged.accepted) - len(new) - len(result.reused)
        if not new:
            return result
        if len(new) < len(staged.accepted):  # a redelivery: rows of the new ones only
            staged = stage_batches(new, for_copy=staged.event_copy is not None)
        _insert_events(staged.events, staged.event_copy)
        _upsert_rollups(staged.cells, staged.rollup_copy, nested=nested)
        _touch_devices(staged.last_seen)
        result.batches = len(new)
        result.events = staged.event_count
        result.devices = set(staged.last_seen)
    return result


ClaimRow = tuple[int, int, int, int, int, int, int, int]


def _claim_rows(accepted: list[Accepted]) -> list[ClaimRow]:
    """Return the dedupe key rows of these messages, sorted by (device, seq)."""
    rows = []
    for a in accepted:
        m = a.message
        assert not isinstance(m, EventBatch)  # stage_batches turned batches into columns
        kind = MessageKind.BATCH if isinstance(m, PackedBatch) else MessageKind.SUMMARY
        rows.append((a.device_id, m.seq, int(kind), a.model_version_id, m.model, m.t0_ms,
                     _event_count(m), a.digest))
    # Key order: concurrent workers wait on each other's uncommitted keys in one order only.
    rows.sort()
    return rows


def _claim_new(accepted: list[Accepted], rows: list[ClaimRow],
               received_at: datetime) -> tuple[list[Accepted], list[Accepted]]:
    """Insert the dedupe key ``rows``; return the messages whose key was not there yet, and
    those whose key was, but with other content (a reused sequence number, not a redelivery)."""
    claimed: set[tuple[int, int]] = set()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "INSERT INTO telemetry_ingestedbatch (device_id, seq, kind, model_version_id,"
                " package_id, t0, event_count, digest, received_at)"
                " SELECT d, s, k, mv, p, 'epoch'::timestamptz + t * interval '1 millisecond',"
                " n, h, %s FROM unnest(%s::bigint[], %s::bigint[], %s::smallint[],"
                " %s::integer[], %s::integer[], %s::bigint[], %s::integer[], %s::bigint[])"
                " AS u(d, s, k, mv, p, t, n, h)"
                " ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq",
                [received_at, *(_pg_array(column) for column in zip(*rows, strict=True))],
            )
            claimed.update((d, s) for d, s in cursor.fetchall())
        else:
            received = connection.ops.adapt_datetimefield_value(received_at)
            for start in range(0, len(rows), 100):
                chunk = rows[start:start + 100]
                values = ",".join(["(%s,%s,%s,%s,%s,%s,%s,%s,%s)"] * len(chunk))
                cursor.execute(
                    "INSERT INTO telemetry_ingestedbatch (device_id, seq, kind,"
                    " model_version_id, package_id, t0, event_count, digest, received_at)"
                    " VALUES " + values + " ON CONFLICT (device_id, seq) DO NOTHING"
                    " RETURNING device_id, seq",
                    [v for d, s, k, mv, p, t, n, h in chunk
                     for v in (d, s, k, mv, p, _sqlite_ts(t), n, h, received)],
                )
                claimed.update((d, s) for d, s in cursor.fetchall())
    # Keys already stored: compare contents (rare: a redelivery, or a device reusing a seq).
    new: list[Accepted] = []
    taken: list[Accepted] = []
    first: dict[tuple[int, int], int] = {}
    for a in accepted:
        key = (a.device_id, a.message.seq)
        if key in claimed and key not in first:
            first[key] = a.digest
            new.append(a)
        else:
            taken.append(a)
    stored = _stored_digests({(a.device_id, a.message.seq) for a in taken} - set(first))
    stored.update(first)  # two copies inside one call: the first one's content is the stored
    # A stored 0 is a row from before digests were kept: take it for a redelivery.
    reused = [a for a in taken
              if stored.get((a.device_id, a.message.seq), 0) not in (0, a.digest)]
    return new, reused


def _stored_digests(keys: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """Return the content digests stored under these (device, seq) keys."""
    found: dict[tuple[int, int], int] = {}
    ordered = sorted(keys)
    for start in range(0, len(ordered), 200):
        condition = Q()
        for device_id, seq in ordered[start:start + 200]:
            condition |= Q(device_id=device_id, seq=seq)
        for device_id, seq, digest in IngestedBatch.objects.filter(condition).values_list(
                "device_id", "seq", "digest"):
            found[(device_id, seq)] = digest
    return found


def _rollups(events: _EventColumns, summaries: list[tuple[Accepted, Summary]]) -> _RollupCells:
    """Sum events (and summaries) per (device, model version, minute, label), vectorized.

    Every event adds 1 to its cell's count, its score and latency to the sums and 1 to its
    latency bucket. A summary adds, per label, its count, mean score x count and mean latency
    x count, all in its window's first minute and in the bucket of its mean latency (it
    carries no per-event latencies).
    """
    # device, model version, bucket (unix s), label, count, score sum, latency sum, and the
    # latency that picks the histogram bucket: one row per event, then per summary label.
    columns = [events.device, events.model_version, events.t_ms // 60_000 * 60, events.label,
               np.ones(len(events), dtype=np.int64), events.score, events.latency,
               events.latency]
    if summaries:
        rows = [(a.device_id, a.model_version_id, s.t0_ms // 60_000 * 60, label, n,
                 s.mean_scores[label] * n, s.mean_latency_100us * n, s.mean_latency_100us)
                for a, s in summaries for label, n in enumerate(s.counts) if n]
        extra = np.array(rows, dtype=np.int64).reshape(-1, 8).T
        columns = [np.concatenate([mine, theirs]) for mine, theirs in zip(columns, extra,
                                                                          strict=True)]
    device, mv, bucket, label, count, score, latency, histogram_latency = columns
    if not len(device):
        return _RollupCells([device, mv, bucket, label], [])
    # Sorted by the full key: cells come out in key order, the order row locks are taken in.
    order = np.lexsort((label, bucket, mv, device))
    keys = [k[order] for k in (device, mv, bucket, label)]
    same = np.ones(len(order), dtype=bool)  # same key as the row before
    same[0] = False
    for k in keys:
        same[1:] &= k[1:] == k[:-1]
    starts = np.flatnonzero(~same)
    count = count[order]
    histogram = np.searchsorted(_LATENCY_BOUNDS, histogram_latency[order], side="left")
    sums = [np.add.reduceat(count, starts), np.add.reduceat(score[order], starts),
            np.add.reduceat(latency[order], starts)]
    sums += [np.add.reduceat(np.where(histogram == b, count, 0), starts)
             for b in range(len(LATENCY_BOUNDS_100US) + 1)]
    return _RollupCells([k[starts] for k in keys], sums)


def _event_copy(events: _EventColumns) -> bytes:
    return _binary_copy([
        (">i8", events.device), (">i4", events.model_version), (">i8", events.seq),
        (">i8", events.t_ms * 1000 - _PG_EPOCH_US), (">i2", events.label),
        (">i2", events.score), (">i4", events.latency)])


def _rollup_copy(cells: _RollupCells) -> bytes:
    device, mv, bucket, label = cells.keys
    return _binary_copy([(">i8", device), (">i4", mv),
                         (">i8", bucket * 1_000_000 - _PG_EPOCH_US), (">i2", label),
                         *((">i8", s) for s in cells.sums)])


def _insert_events(events: _EventColumns, data: bytes | None) -> None:
    if not len(events):
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            data = data if data is not None else _event_copy(events)
            with cursor.copy(
                f"COPY telemetry_event ({_EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.write(data)
        else:
            columns = (events.device.tolist(), events.model_version.tolist(), events.seq.tolist(),
                       [_sqlite_ts(t) for t in events.t_ms.tolist()], events.label.tolist(),
                       events.score.tolist(), events.latency.tolist())
            cursor.executemany(
                f"INSERT INTO telemetry_event ({_EVENT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                list(zip(*columns, strict=True)),
            )


def _upsert_rollups(cells: _RollupCells, data: bytes | None, *, nested: bool) -> None:
    """Add the cells to the rollups (``data``: their COPY payload, if staged); ``nested``:
    inside a caller's transaction."""
    if not len(cells):
        return
    updates = ", ".join(f"{c} = telemetry_rollup.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
    conflict = " ON CONFLICT (device_id, model_version_id, bucket, label) DO UPDATE SET "
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_ROLLUP_STAGE_DDL)
            data = data if data is not None else _rollup_copy(cells)
            with cursor.copy(f"COPY telemetry_rollup_stage ({_ROLLUP_COLUMNS}) FROM STDIN"
                             " (FORMAT BINARY)") as copy:
                copy.write(data)
            # Key order: concurrent workers take the rows' locks in the same order.
            cursor.execute(
                f"INSERT INTO telemetry_rollup ({_ROLLUP_COLUMNS}) SELECT {_ROLLUP_COLUMNS}"
                " FROM telemetry_rollup_stage ORDER BY device_id, model_version_id, bucket,"
                " label" + conflict + updates)
            if nested:  # no commit of ours will empty the stage
                cursor.execute("DELETE FROM telemetry_rollup_stage")
        else:
            columns = [c.tolist() for c in (*cells.keys, *cells.sums)]
            columns[2] = [_sqlite_ts(minute * 1000) for minute in columns[2]]
            cursor.executemany(
                f"INSERT INTO telemetry_rollup ({_ROLLUP_COLUMNS}) VALUES ("
                + ",".join(["%s"] * 12) + ")" + conflict + updates,
                list(zip(*columns, strict=True)),
            )


def _touch_devices(last_seen: dict[int, int]) -> None:
    """Move the devices' last seen (and a first one) forward to their latest event."""
    ordered = sorted(last_seen.items())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One statement for all (one per device took ~200 µs each: a round trip, a plan).
            # Rows are locked in id order first, as concurrent workers must take them.
            ids = _pg_array(d for d, _ in ordered)
            cursor.execute("SELECT 1 FROM devices_device WHERE id = ANY(%s::bigint[]) ORDER BY id"
                           " FOR NO KEY UPDATE", [ids])
            cursor.execute(
                "UPDATE devices_device d SET last_seen = v.t, first_seen = COALESCE(d.first_seen,"
                " v.t) FROM (SELECT id, 'epoch'::timestamptz + ms * interval '1 millisecond' AS t"
                " FROM unnest(%s::bigint[], %s::bigint[]) AS u(id, ms)) AS v WHERE d.id = v.id"
                " AND (d.last_seen IS NULL OR d.last_seen < v.t)",
                [ids, _pg_array(t for _, t in ordered)])
            return
        cursor.executemany(
            "UPDATE devices_device SET last_seen = %s, first_seen = COALESCE(first_seen, %s)"
            " WHERE id = %s AND (last_seen IS NULL OR last_seen < %s)",
            [(_db_dt(t / 1000), _db_dt(t / 1000), d, _db_dt(t / 1000))
             for d, t in ordered],
        )
