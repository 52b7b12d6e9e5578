"""Raw events partitioned by day on PostgreSQL: made ahead, rows never stranded, whole days
dropped by retention, an existing table converted without copying (migration 0007)."""

import time
from datetime import UTC, date, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from fleet.telemetry import partitions
from fleet.telemetry.models import Event, Rollup

pytestmark = [pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("partitioning is PostgreSQL's (SQLite keeps one table)")


def _where(event_seq: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM telemetry_event WHERE seq = %s",
                       [event_seq])
        return cursor.fetchone()[0]


def _event(seq: int, ts: datetime) -> None:
    Event.objects.create(device_id=1, seq=seq, ts=ts, label=0, score=1, latency_100us=1)


@pytest.mark.django_db
def test_migrated_table_is_partitioned_with_days_ahead_and_a_default() -> None:
    assert partitions.is_partitioned()
    names = {p.name for p in partitions.partitions()}
    today = datetime.now(UTC).date()
    for offset in range(partitions.DAYS_AHEAD + 1):
        assert partitions.day_name(today + timedelta(days=offset)) in names
    assert partitions.DEFAULT in names
    _event(1, timezone.now())
    assert _where(1) == partitions.day_name(today)


@pytest.mark.django_db
def test_a_row_with_no_day_partition_waits_in_default_and_moves_when_its_day_is_made() -> None:
    far = datetime(2031, 5, 17, 12, tzinfo=UTC)
    _event(7, far)
    assert _where(7) == partitions.DEFAULT
    (before,) = Event.objects.filter(seq=7).values_list("id", flat=True)
    assert partitions.create_day(far.date())
    assert not partitions.create_day(far.date())  # idempotent
    assert _where(7) == partitions.day_name(far.date())
    assert list(Event.objects.filter(seq=7).values_list("id", flat=True)) == [before]
    _event(8, far + timedelta(hours=3))
    assert _where(8) == partitions.day_name(far.date())


@pytest.mark.django_db
def test_prune_drops_whole_old_days_keeps_recent_ones_and_rollups() -> None:
    now = timezone.now()
    days = {}
    for seq, age in ((1, 1), (2, 35), (3, 36), (4, 90)):
        ts = now - timedelta(days=age)
        partitions.create_day(ts.date())
        days[seq] = partitions.day_name(ts.date())
        _event(seq, ts)
        Rollup.objects.create(device_id=1, bucket=ts.replace(second=0, microsecond=0), label=0,
                              count=1)
    _event(5, now - timedelta(days=400))  # no partition: waits in the default one
    out = StringIO()
    call_command("prune_telemetry", "--days", "30", stdout=out)
    names = {p.name for p in partitions.partitions()}
    assert days[1] in names
    for seq in (2, 3, 4):
        assert days[seq] not in names
        assert days[seq] in out.getvalue()
    assert "deleted 1 events" in out.getvalue()  # the default partition's, row by row
    assert list(Event.objects.values_list("seq", flat=True)) == [1]
    assert Rollup.objects.count() == 4
    # A day straddling the cutoff stays whole until all of it is older.
    straddling = (now - timedelta(days=30)).date()
    partitions.create_day(straddling)
    assert partitions.day_name(straddling) not in partitions.drop_partitions_before(
        now - timedelta(days=30))


@pytest.mark.django_db
def test_ensure_partitions_makes_yesterday_to_days_ahead() -> None:
    base = date(2032, 2, 28)
    created = partitions.ensure_partitions(2, today=base)
    assert created == [partitions.day_name(base + timedelta(days=d)) for d in range(-1, 3)]
    assert partitions.ensure_partitions(2, today=base) == []
    p = {x.name: x for x in partitions.partitions()}[partitions.day_name(date(2032, 2, 29))]
    assert (p.lower, p.upper) == (datetime(2032, 2, 29, tzinfo=UTC),
                                  datetime(2032, 3, 1, tzinfo=UTC))


@pytest.mark.django_db(transaction=True)
def test_migration_attaches_the_existing_table_without_copying_and_numbers_on() -> None:
    """Back to 0006 (a plain table), rows in it, forward again: they stay in the legacy
    partition, new ids continue after theirs, and new rows go to day partitions."""
    from django.db.migrations.executor import MigrationExecutor

    def migrate(target: str) -> None:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate([("telemetry", target)])

    latest = MigrationExecutor(connection).loader.graph.leaf_nodes("telemetry")[0][1]
    migrate("0006_batch_content_digest")
    try:
        assert not partitions.is_partitioned()
        now = timezone.now()
        for seq in range(1, 6):
            _event(seq, now - timedelta(days=seq * 10))
        _event(6, now)
        top = max(Event.objects.values_list("id", flat=True))
    finally:
        migrate(latest)
    assert partitions.is_partitioned()
    assert {_where(s) for s in range(1, 7)} == {partitions.LEGACY}
    legacy = {p.name: p for p in partitions.partitions()}[partitions.LEGACY]
    assert legacy.lower is None and legacy.upper > now
    tomorrow = (now + timedelta(days=1)).date()
    _event(7, datetime(tomorrow.year, tomorrow.month, tomorrow.day, 1, tzinfo=UTC))
    assert _where(7) == partitions.day_name(tomorrow)
    assert Event.objects.get(seq=7).id > top
    out = StringIO()
    call_command("prune_telemetry", "--days", "25", stdout=out)  # legacy: row by row
    assert sorted(Event.objects.values_list("seq", flat=True)) == [1, 2, 6, 7]


@pytest.mark.django_db(transaction=True)  # the reader must see the committed partition
def test_drop_waits_for_a_long_reader_in_short_tries(caplog: pytest.LogCaptureFixture) -> None:
    """A reader holding the table makes the DROP give up its place in the lock queue every
    LOCK_TIMEOUT_MS (so ingest is never held longer than that) and try again until it can."""
    import threading

    import psycopg

    day = date(2035, 1, 1)  # after any legacy partition of an earlier test
    partitions.create_day(day)
    s = connection.settings_dict
    reader = psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432,
                             user=s["USER"], password=s["PASSWORD"] or None, dbname=s["NAME"])
    reader.execute("LOCK TABLE telemetry_event IN ACCESS SHARE MODE")  # a transaction, open
    timer = threading.Timer(1.0, reader.commit)
    timer.start()
    try:
        with caplog.at_level("INFO", logger="fleet.telemetry.partitions"):
            started = time.monotonic()
            partitions._with_lock_retries(
                [(f"DROP TABLE {partitions.day_name(day)}", [])], "drop")
            waited = time.monotonic() - started
    finally:
        timer.join()
        reader.close()
    assert partitions.day_name(day) not in {p.name for p in partitions.partitions()}
    assert "lock not granted" in caplog.text
    assert waited >= 0.9
