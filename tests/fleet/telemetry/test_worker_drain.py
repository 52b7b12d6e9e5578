"""Claiming a dead worker's drain (fleet/intake/drain.py): one live peer wins, never itself,
never a live, retired or already claimed worker. Runs on SQLite and on PostgreSQL (the
scripts/test.sh pass with DATABASE_URL); the concurrent claim is PostgreSQL only.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from fleet.intake.drain import (
    Drainer,
    claim_dead_peer,
    dead_candidates,
    finish_drain,
    renew_drain,
    try_claim,
)
from fleet.intake.stats import save_worker_stats
from fleet.telemetry.models import WorkerStats

DEAD_AFTER_S = 60


def beat(worker: str, age_s: float, now: datetime, **fields: object) -> WorkerStats:
    """A stats row whose last heartbeat is ``age_s`` old at ``now``."""
    at = now - timedelta(seconds=age_s)
    return WorkerStats.objects.create(worker=worker, started_at=at - timedelta(hours=1),
                                      heartbeat_at=at, **fields)


@pytest.fixture(autouse=True)
def dead_after() -> object:
    with override_settings(WORKER_DEAD_AFTER_S=DEAD_AFTER_S):
        yield


@pytest.mark.django_db
def test_a_live_worker_claims_a_dead_peer_once_and_only_a_dead_one() -> None:
    now = timezone.now()
    beat("alive", DEAD_AFTER_S - 5, now)
    beat("dead", DEAD_AFTER_S + 5, now)
    assert claim_dead_peer("me", now=now) == "dead"
    row = WorkerStats.objects.get(worker="dead")
    assert row.drained_by == "me" and row.drain_until > now and row.retired_at is None
    # Claimed: neither this worker nor another claims it again while the claim holds.
    assert claim_dead_peer("me", now=now) is None
    assert claim_dead_peer("other", now=now + timedelta(seconds=4)) is None
    assert WorkerStats.objects.get(worker="alive").drained_by == ""


@pytest.mark.django_db
def test_a_worker_never_drains_itself() -> None:
    now = timezone.now()
    beat("me", 10 * DEAD_AFTER_S, now)  # its own row looks dead (e.g. a stalled stats save)
    assert claim_dead_peer("me", now=now) is None
    assert WorkerStats.objects.get(worker="me").drained_by == ""
    assert claim_dead_peer("peer", now=now) == "me"


@pytest.mark.django_db
def test_a_retired_worker_is_not_drained_again() -> None:
    now = timezone.now()
    beat("dead", 2 * DEAD_AFTER_S, now)
    assert claim_dead_peer("me", now=now) == "dead"
    assert finish_drain("dead", "me")
    row = WorkerStats.objects.get(worker="dead")
    assert row.retired_at is not None and row.drain_until is None
    assert not finish_drain("dead", "me")  # once
    later = now + timedelta(hours=1)
    assert claim_dead_peer("me", now=later) is None
    assert claim_dead_peer("other", now=later) is None


@pytest.mark.django_db
def test_a_lapsed_claim_is_taken_by_a_peer_and_a_renewed_one_is_not() -> None:
    now = timezone.now()
    beat("dead", 2 * DEAD_AFTER_S, now)
    assert claim_dead_peer("drainer", now=now) == "dead"
    until = WorkerStats.objects.get(worker="dead").drain_until
    assert renew_drain("dead", "drainer")
    assert WorkerStats.objects.get(worker="dead").drain_until >= until
    assert not renew_drain("dead", "other")  # not its claim
    assert claim_dead_peer("other", now=timezone.now()) is None
    # The drainer died: once its claim lapsed, a peer takes the drain over.
    lapsed = WorkerStats.objects.get(worker="dead").drain_until + timedelta(seconds=1)
    assert claim_dead_peer("other", now=lapsed) == "dead"
    assert WorkerStats.objects.get(worker="dead").drained_by == "other"
    assert not finish_drain("dead", "drainer")  # the first drainer no longer holds it


@pytest.mark.django_db
def test_two_peers_that_read_the_same_dead_row_claim_it_once() -> None:
    """The claim's WHERE repeats what was read: the loser of a race updates nothing."""
    now = timezone.now()
    beat("dead", 2 * DEAD_AFTER_S, now)
    # Both read the candidate before either writes; the first to UPDATE wins.
    seen_by_a, seen_by_b = dead_candidates("a", now), dead_candidates("b", now)
    assert [w for _, w, _ in seen_by_a] == [w for _, w, _ in seen_by_b] == ["dead"]
    assert try_claim("a", *seen_by_a[0][::2], now)
    assert not try_claim("b", *seen_by_b[0][::2], now)
    assert not try_claim("b", *seen_by_b[0][::2], now + timedelta(seconds=1))
    assert WorkerStats.objects.get(worker="dead").drained_by == "a"


@pytest.mark.django_db
def test_a_worker_that_reports_again_clears_the_claim_and_is_not_marked_retired() -> None:
    now = timezone.now()
    beat("back", 2 * DEAD_AFTER_S, now)
    assert claim_dead_peer("me", now=now) == "back"
    save_worker_stats("back", now, Counter(events=1))  # its first heartbeat after a restart
    row = WorkerStats.objects.get(worker="back")
    assert (row.drained_by, row.drain_until, row.retired_at) == ("", None, None)
    assert not finish_drain("back", "me")
    assert WorkerStats.objects.get(worker="back").retired_at is None
    assert claim_dead_peer("me") is None  # alive now
    # A retired worker that comes back is live again (and drainable if it dies again).
    beat("gone", 2 * DEAD_AFTER_S, now, retired_at=now)
    save_worker_stats("gone", now, Counter())
    assert WorkerStats.objects.get(worker="gone").retired_at is None


@pytest.mark.django_db
def test_the_drainer_claims_nothing_while_all_peers_are_alive() -> None:
    now = timezone.now()
    beat("a", 1, now)
    beat("b", DEAD_AFTER_S - 1, now)
    drainer = Drainer("a", Counter())
    assert drainer.tick() is None
    assert drainer.thread is None
    assert set(WorkerStats.objects.values_list("drained_by", flat=True)) == {""}


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_on_postgresql_have_one_winner() -> None:
    """Two peers' UPDATEs on one row at once: the second waits for the first's row lock, then
    re-checks its WHERE against the committed claim and updates nothing."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks and re-checked WHEREs of concurrent UPDATEs: PostgreSQL")
    now = timezone.now()
    for i in range(3):  # dead-0 the oldest: claimed first
        beat(f"dead-{i}", 2 * DEAD_AFTER_S + 10 * (3 - i), now)
    claimed_by_first = threading.Event()
    release_first = threading.Event()
    results: dict[str, str | None] = {}

    def first() -> None:
        try:
            with transaction.atomic():  # holds the claimed row's lock until released
                results["first"] = claim_dead_peer("first", now=now)
                claimed_by_first.set()
                release_first.wait(10)
        finally:
            connection.close()

    def second() -> None:
        try:
            results["second"] = claim_dead_peer("second", now=now)
        finally:
            connection.close()

    a = threading.Thread(target=first)
    a.start()
    assert claimed_by_first.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(1.0)
    assert b.is_alive(), "the second claim should wait for the first's uncommitted row"
    release_first.set()
    a.join(10)
    b.join(10)
    assert results["first"] == "dead-0"  # the oldest heartbeat first
    # The second found dead-0 claimed once the first committed, and claimed the next one.
    assert results["second"] == "dead-1"
    owners = dict(WorkerStats.objects.values_list("worker", "drained_by"))
    assert owners[results["first"]] == "first" and owners[results["second"]] == "second"
    assert sorted(owners.values()).count("") == 1
