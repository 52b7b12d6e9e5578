"""Raw events partitioned by day on PostgreSQL: create partitions ahead, drop whole old ones.

On PostgreSQL ``telemetry_event`` is a table partitioned by range of ``ts`` (migration 0007):

- ``telemetry_event_pYYYYMMDD``: one partition per UTC day, ``[day, day + 1)``, made ahead of
  time by :func:`ensure_partitions` (the worker calls it every hour, ``prune_telemetry`` and
  ``manage.py telemetry_partitions`` too);
- ``telemetry_event_default``: the DEFAULT partition, where a row lands when no day partition
  covers its time (a device clock far off, or partitions not made ahead). Without it such a
  row would fail the whole COPY, the worker could never acknowledge the batch and the broker
  would redeliver it forever. :func:`ensure_partitions` moves the rows of a day it creates out
  of the default partition, so nothing stays stranded there once its day exists;
- ``telemetry_event_legacy``: the table as it was before the migration, attached as one
  partition ``[MINVALUE, first day)`` without copying a row (absent on a fresh database).

Retention (:func:`drop_partitions_before`) drops a day partition once its whole day is older
than the cutoff: no DELETE, no dead tuples, no vacuum debt, and the cost does not depend on
how many rows the day held. Only the legacy and default partitions are pruned row by row.

Locks: attaching a partition takes SHARE UPDATE EXCLUSIVE on the parent (COPY goes on); a
DROP takes ACCESS EXCLUSIVE on the parent for an instant, so every statement here runs with a
short ``lock_timeout`` and is retried: a long telemetry query must not make ingest queue
behind a DROP that waits for it. (``DETACH ... CONCURRENTLY`` is not allowed while a default
partition exists.)

SQLite keeps one plain table; every function here is a no-op there.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

log = logging.getLogger(__name__)

PARENT = "telemetry_event"
DEFAULT = "telemetry_event_default"
LEGACY = "telemetry_event_legacy"
DAY_PREFIX = "telemetry_event_p"
COLUMNS = "id, device_id, model_version_id, seq, ts, label, score, latency_100us"
DAYS_AHEAD = 3  # partitions made ahead: a worker that is down for 3 days still finds its day
# While a DROP waits for its lock, ingest's COPY queues behind it: each attempt may stall
# ingest this long, so keep it short and try often (measured: bench/soak.py).
LOCK_TIMEOUT_MS = 300
LOCK_RETRIES = 50
_DAY_NAME = re.compile(r"^telemetry_event_p(\d{8})$")


@dataclass(frozen=True)
class Partition:
    """One partition of the raw event table with its bounds (None: unbounded / default)."""

    name: str
    lower: datetime | None
    upper: datetime | None
    is_default: bool = False

    @property
    def day(self) -> date | None:
        """The UTC day of a day partition, else None."""
        m = _DAY_NAME.match(self.name)
        return datetime.strptime(m.group(1), "%Y%m%d").date() if m else None


def day_name(day: date) -> str:
    """Return the name of ``day``'s partition."""
    return f"{DAY_PREFIX}{day:%Y%m%d}"


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def is_partitioned(conn: BaseDatabaseWrapper | None = None) -> bool:
    """True when the raw event table is partitioned (PostgreSQL after migration 0007)."""
    conn = conn or connection
    if conn.vendor != "postgresql":
        return False
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)",
                       [PARENT])
        return cursor.fetchone() is not None


def partitions(conn: BaseDatabaseWrapper | None = None) -> list[Partition]:
    """Return the raw event table's partitions ordered by lower bound (default last)."""
    conn = conn or connection
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [PARENT])
        rows = cursor.fetchall()
        found = []
        for name, bound in rows:
            if bound == "DEFAULT":
                found.append(Partition(name, None, None, True))
                continue
            m = re.match(r"FOR VALUES FROM \((.+)\) TO \((.+)\)$", bound)
            if not m:
                raise ValueError(f"unexpected bound of {name}: {bound}")
            lower, upper = (_bound_value(cursor, v) for v in m.groups())
            found.append(Partition(name, lower, upper))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda p: (p.is_default, p.lower or datetime.min.replace(
        tzinfo=UTC), p.upper or far))


def _bound_value(cursor: object, text: str) -> datetime | None:
    if text in ("MINVALUE", "MAXVALUE"):
        return None
    cursor.execute(f"SELECT {text}::timestamptz")  # type: ignore[attr-defined]  # PG's literal
    return cursor.fetchone()[0]  # type: ignore[attr-defined]


def _with_lock_retries(statements: list[tuple[str, list[object]]], what: str) -> None:
    """Run ``statements`` in one transaction with a short lock timeout; retry on timeouts."""
    from django.db.utils import OperationalError

    for attempt in range(LOCK_RETRIES):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                for sql, params in statements:
                    cursor.execute(sql, params)
            return
        except OperationalError as exc:
            if "lock timeout" not in str(exc) or attempt == LOCK_RETRIES - 1:
                raise
            log.info("%s: lock not granted within %d ms (try %d), retrying", what,
                     LOCK_TIMEOUT_MS, attempt + 1)
            time.sleep(min(0.1 * (attempt + 1), 2.0) * random.uniform(0.5, 1.5))


def create_day(day: date) -> bool:
    """Create ``day``'s partition if missing, taking its rows out of the default partition.

    Returns True when it was created. Safe with concurrent ingest: the partition is built as a
    plain table and attached (SHARE UPDATE EXCLUSIVE on the parent), the rows of its day that
    waited in the default partition move in the same transaction.
    """
    name = day_name(day)
    lo, hi = _day_start(day), _day_start(day + timedelta(days=1))
    existing = partitions()
    if any(p.name == name for p in existing):
        return False
    for p in existing:  # a legacy partition may already cover part of this day
        if p.is_default or p.upper is None:
            continue
        if (p.lower is None or p.lower < hi) and p.upper > lo:
            return False
    has_default = any(p.is_default for p in existing)
    statements: list[tuple[str, list[object]]] = [
        (f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)", [])]
    if has_default:
        statements.append((
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE ts >= %s AND ts < %s RETURNING"
            f" {COLUMNS}) INSERT INTO {name} ({COLUMNS}) SELECT {COLUMNS} FROM moved",
            [lo, hi]))
    statements.append((f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM (%s)"
                       " TO (%s)", [lo, hi]))
    _with_lock_retries(statements, f"create {name}")
    log.info("created partition %s", name)
    return True


def ensure_partitions(days_ahead: int = DAYS_AHEAD, *, today: date | None = None) -> list[str]:
    """Make the partitions of today and the next ``days_ahead`` days; return those created.

    A no-op unless the raw event table is partitioned (SQLite, or PostgreSQL before 0007).
    """
    if not is_partitioned():
        return []
    today = today or datetime.now(UTC).date()
    created = []
    for offset in range(-1, days_ahead + 1):  # yesterday too: late batches near midnight
        day = today + timedelta(days=offset)
        if create_day(day):
            created.append(day_name(day))
    return created


def drop_partitions_before(cutoff: datetime) -> list[str]:
    """Drop every day partition whose whole day is older than ``cutoff``; return their names.

    The legacy and default partitions are never dropped here (they are pruned row by row).
    """
    if not is_partitioned():
        return []
    dropped = []
    for p in partitions():
        if p.day is None or p.upper is None or p.upper > cutoff:
            continue
        _with_lock_retries([(f"DROP TABLE IF EXISTS {p.name}", [])], f"drop {p.name}")
        log.info("dropped partition %s", p.name)
        dropped.append(p.name)
    return dropped


def row_pruned_tables() -> list[str]:
    """The partitions (or the plain table) whose old rows are deleted row by row."""
    if not is_partitioned():
        return [PARENT]
    names = {p.name for p in partitions()}
    return [t for t in (LEGACY, DEFAULT) if t in names]
