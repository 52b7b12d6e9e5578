"""A bounded on-disk queue of encoded event messages awaiting the broker's PUBACK.

The device appends every encoded batch or summary here before it tries to send it, and removes
it only when the broker acknowledged it, so a message survives a dropped connection, a broker
restart and a device restart alike. Storage is one SQLite file in the device's state directory
(atomic appends and removals, no partial records after a crash, nothing to install).

Order: entries keep the order they were put in (an autoincrement id), and the client sends
them in that order after every (re)connect. The same message may go out twice (sent, then the
connection dropped before its PUBACK): the batch keeps its ``seq``, and the server dedupes on
(device, seq). The outbox itself never holds one message twice and never reorders.

Bounds: at most ``max_entries`` messages and ``max_bytes`` of payload. When a new message does
not fit, the oldest ones are dropped (the newest telemetry is the most useful after a long
outage) and counted in :attr:`Outbox.dropped`, which is persisted and logged.

Sequence floor: the outbox also remembers, in the same transaction as each append, one past
the highest ``seq`` it was ever given (:attr:`Outbox.seq_floor`), acknowledged entries
included. The sequence counter starts at or above it after a reboot, so a lost or rolled-back
counter file (or a clock set back) can never make the device reuse a number the server has
seen (it would dead-letter the batch as SEQUENCE_REUSED).

Thread-safe: one lock serializes every call, so an application thread may ``put`` while the
network thread does ``pending`` and ``ack``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Outbox", "OutboxEntry"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entry (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued message: ``id`` orders the queue, ``seq`` is the batch's own sequence."""

    id: int
    seq: int
    payload: bytes


class Outbox:
    """Hold encoded messages durably until acknowledged, within fixed bounds."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
        durable: bool = True,
    ) -> None:
        """Open (or create) the outbox at ``path``.

        ``durable=False`` hands writes to the OS without fsync: safe against a crash of this
        process, not against power loss. The simulator uses it; a real device should not.
        """
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("the outbox needs room for at least one entry")
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=DELETE")  # one file descriptor per outbox
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        self._db.executescript(_SCHEMA)
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM entry"
        ).fetchone()
        self._count: int = count
        self._bytes: int = size
        row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        self._dropped: int = row[0] if row else 0
        row = self._db.execute(
            "SELECT MAX(COALESCE((SELECT value FROM meta WHERE key = 'seq_floor'), 0), "
            "COALESCE((SELECT MAX(seq) + 1 FROM entry), 0))").fetchone()
        self._seq_floor: int = row[0]

    # -- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        """Return how many messages wait for their PUBACK."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Return the payload bytes held."""
        return self._bytes

    @property
    def dropped(self) -> int:
        """Return how many messages were dropped because the outbox was full, ever."""
        return self._dropped

    @property
    def seq_floor(self) -> int:
        """Return one past the highest ``seq`` ever put here (0: none), persisted."""
        return self._seq_floor

    def pending(self, *, after_id: int = 0, limit: int = 16) -> list[OutboxEntry]:
        """Return up to ``limit`` entries with an id above ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, payload FROM entry WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxEntry(i, s, bytes(p)) for i, s, p in rows]

    # -- changes --------------------------------------------------------------------------

    def put(self, seq: int, payload: bytes) -> int:
        """Append a message; drop the oldest ones first if it would not fit. Return its id."""
        size = len(payload)
        if size > self.max_bytes:
            raise ValueError(f"a {size}-byte message can never fit an outbox of {self.max_bytes}")
        with self._lock:
            dropped = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                while self._count + 1 > self.max_entries or self._bytes + size > self.max_bytes:
                    oldest = self._db.execute(
                        "SELECT id, LENGTH(payload) FROM entry ORDER BY id LIMIT 1"
                    ).fetchone()
                    self._db.execute("DELETE FROM entry WHERE id = ?", (oldest[0],))
                    self._count -= 1
                    self._bytes -= oldest[1]
                    dropped += 1
                if dropped:
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                        (dropped,),
                    )
                cursor = self._db.execute(
                    "INSERT INTO entry (seq, payload) VALUES (?, ?)", (seq, payload)
                )
                if seq + 1 > self._seq_floor:
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('seq_floor', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                        (seq + 1,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._reload_counts()
                raise
            self._count += 1
            self._bytes += size
            self._dropped += dropped
            self._seq_floor = max(self._seq_floor, seq + 1)
        if dropped:
            log.warning(
                "%s: outbox full (%d messages, %d bytes): dropped the %d oldest (%d in total)",
                self.path, self.max_entries, self.max_bytes, dropped, self._dropped,
            )
        entry_id = cursor.lastrowid
        assert entry_id is not None
        return entry_id

    def ack(self, entry_id: int) -> bool:
        """Remove an acknowledged entry; return False if it was already gone (dropped)."""
        with self._lock:
            row = self._db.execute(
                "DELETE FROM entry WHERE id = ? RETURNING LENGTH(payload)", (entry_id,)
            ).fetchone()
            if row is None:
                return False
            self._count -= 1
            self._bytes -= row[0]
            return True

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _reload_counts(self) -> None:
        self._count, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM entry"
        ).fetchone()
