"""Rate buckets shared by every web process: one atomic upsert per request, in the database.

Each (scope, client) has a row in ``fleet_rate_bucket`` holding a GCRA "theoretical arrival
time" (TAT): a token bucket of ``limit`` requests refilling one every ``period / limit``. A
request is let through when, after it, the bucket would hold at most ``limit`` requests' worth
of the last ``period`` (TAT - now <= period); a refused request leaves the TAT as it was, so
hammering a full bucket does not keep it full. The decision and the update are one
``INSERT ... ON CONFLICT (key) DO UPDATE ... RETURNING`` (PostgreSQL; SQLite >= 3.35): the
database's row lock orders concurrent requests for one key, so no two processes, threads or
hosts can both take the last token.

A row whose TAT has passed means an empty bucket, exactly like a missing row: every
``PRUNE_EVERY``-th call of a process deletes those rows, so the table holds only the clients
seen within the last period or so.

Times are microseconds since the epoch from the web host's clock (integers: exact arithmetic);
hosts sharing a database are expected to keep their clocks in sync (NTP), as for tokens' and
nonces' expiry.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass

from django.db import connection

PRUNE_EVERY = 1000
_calls = itertools.count(1)
_MAX_KEY = 120  # RateBucket.key's max_length

# %s in order: key, now + interval (the TAT of a fresh bucket after one request); then for the
# conflict: now + period - interval (the latest TAT that still has room for one more request,
# twice), now (twice), interval.
_TAKE = """
INSERT INTO fleet_rate_bucket (key, tat, allowed) VALUES (%s, %s, TRUE)
ON CONFLICT (key) DO UPDATE SET
    allowed = fleet_rate_bucket.tat <= %s,
    tat = CASE WHEN fleet_rate_bucket.tat > %s THEN fleet_rate_bucket.tat
               WHEN fleet_rate_bucket.tat > %s THEN fleet_rate_bucket.tat + %s
               ELSE excluded.tat END
RETURNING allowed, tat
"""


@dataclass(frozen=True)
class Verdict:
    """A request's fate: let through or not, and seconds until the next one would be."""

    allowed: bool
    wait: float


def bucket_key(scope: str, ident: str) -> str:
    """Return the row key of ``ident``'s bucket in ``scope`` (hashed when too long for it)."""
    key = f"{scope}:{ident}"
    if len(key) <= _MAX_KEY:
        return key
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{scope[:_MAX_KEY - 66]}:#{digest}"


def take(key: str, limit: int, period: float, now_us: int | None = None) -> Verdict:
    """Count one request against ``key``'s bucket of ``limit`` requests per ``period`` seconds.

    One statement (plus, every ``PRUNE_EVERY``-th call, one delete of empty buckets). It runs
    in autocommit when called outside a transaction (a request's throttle check): the count
    stays even when the request then fails.
    """
    if limit <= 0:
        return Verdict(False, float(period))
    now = time.time_ns() // 1000 if now_us is None else now_us
    period_us = int(period * 1_000_000)
    interval = max(1, period_us // limit)  # 0 would never move the bucket: no limit at all
    last_room = now + period_us - interval
    with connection.cursor() as cursor:
        cursor.execute(_TAKE, [key, now + interval, last_room, last_room, now, interval])
        allowed, tat = cursor.fetchone()
    if next(_calls) % PRUNE_EVERY == 0:
        prune(now)
    wait = 0.0 if allowed else (tat - last_room) / 1_000_000
    return Verdict(bool(allowed), wait)


def prune(now_us: int | None = None) -> int:
    """Delete the buckets that are empty by ``now_us`` (default: now); return how many."""
    now = time.time_ns() // 1000 if now_us is None else now_us
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM fleet_rate_bucket WHERE tat < %s", [now])
        return cursor.rowcount
