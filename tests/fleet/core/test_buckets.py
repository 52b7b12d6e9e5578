"""Rate buckets in the database: a token bucket per (scope, client), one upsert a request."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from fleet.core import buckets
from fleet.core.buckets import bucket_key, prune, take
from fleet.core.models import RateBucket

T0 = 1_800_000_000 * 1_000_000  # a fixed "now", microseconds since the epoch
S = 1_000_000  # one second in microseconds

pytestmark = pytest.mark.django_db


def allowed(key: str, at_us: int, n: int = 1, limit: int = 3, period: float = 60) -> list[bool]:
    return [take(key, limit, period, now_us=at_us).allowed for _ in range(n)]


def test_a_burst_of_the_limit_passes_then_one_request_per_interval() -> None:
    """3/min: three at once, then one every 20 s, never two before their time."""
    assert allowed("k", T0, 4) == [True, True, True, False]
    refused = take("k", 3, 60, now_us=T0)
    assert not refused.allowed and refused.wait == 20.0
    assert allowed("k", T0 + 20 * S - 1) == [False]
    assert allowed("k", T0 + 20 * S, 2) == [True, False]
    assert allowed("k", T0 + 40 * S, 2) == [True, False]


def test_hammering_a_full_bucket_does_not_push_its_refill_back() -> None:
    """A refused request is not counted: the client is let in again on time."""
    allowed("k", T0, 3)
    assert not any(allowed("k", T0 + 10 * S, 50))
    assert allowed("k", T0 + 20 * S) == [True]


def test_after_a_quiet_period_the_whole_burst_is_back_and_no_more() -> None:
    """Window roll-over: one full period after the burst the bucket is full again, not
    overfull however long the client stayed away."""
    allowed("k", T0, 3)
    assert allowed("k", T0 + 60 * S, 4) == [True, True, True, False]
    assert allowed("k", T0 + 3600 * S, 4) == [True, True, True, False]


def test_each_client_and_scope_has_its_own_bucket() -> None:
    assert allowed("enroll:203.0.113.9", T0, 4) == [True, True, True, False]
    assert allowed("enroll:203.0.113.10", T0, 1) == [True]
    assert allowed("gateway:203.0.113.9", T0, 1) == [True]


def test_a_zero_rate_lets_nothing_through() -> None:
    assert not take("k", 0, 60, now_us=T0).allowed


def test_over_long_identities_are_hashed_into_distinct_keys() -> None:
    first, second = bucket_key("enroll", "a" * 300), bucket_key("enroll", "a" * 299 + "b")
    assert first != second
    assert len(first) <= 120 and len(second) <= 120
    assert bucket_key("enroll", "203.0.113.9") == "enroll:203.0.113.9"
    take(first, 3, 60, now_us=T0)  # fits the column
    assert RateBucket.objects.filter(key=first).exists()


def test_prune_deletes_only_empty_buckets_and_changes_no_verdict() -> None:
    allowed("idle", T0, 1)  # empty again at T0 + 20 s
    allowed("busy", T0 + 50 * S, 3)  # empty at T0 + 110 s
    assert prune(T0 + 60 * S) == 1
    assert set(RateBucket.objects.values_list("key", flat=True)) == {"busy"}
    assert allowed("busy", T0 + 60 * S) == [False]
    assert allowed("idle", T0 + 60 * S, 4) == [True, True, True, False]


def test_every_nth_call_prunes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buckets, "PRUNE_EVERY", 3)
    monkeypatch.setattr(buckets, "_calls", iter(range(1, 100)))
    allowed("old", T0, 1)
    allowed("new", T0 + 3600 * S, 1)  # the 2nd call: no prune yet
    assert RateBucket.objects.count() == 2
    allowed("new", T0 + 3600 * S, 1)  # the 3rd prunes "old"
    assert set(RateBucket.objects.values_list("key", flat=True)) == {"new"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_never_take_more_than_the_limit() -> None:
    """Eight threads, eight PostgreSQL connections, 80 requests on one key at once: exactly
    the limit passes (the upsert's row lock orders them)."""
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL (SQLite serialises the whole database)")
    start = threading.Barrier(8)
    verdicts: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        try:
            start.wait()
            mine = [take("enroll:203.0.113.9", 10, 3600).allowed for _ in range(10)]
            with lock:
                verdicts.extend(mine)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(verdicts) == 80
    assert sum(verdicts) == 10
