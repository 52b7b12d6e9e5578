"""Migration devices 0012 (the device list's indexes, fleet/core/live_indexes.py): built
CONCURRENTLY on PostgreSQL, so writes to a live fleet go on during the build, and re-runnable
after a failed build (its INVALID index is rebuilt, indexes already built are kept); plain
CREATE INDEX on SQLite, also re-runnable after a partial run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder
from django.test.utils import CaptureQueriesContext

from fleet.devices.models import Device, HardwareProfile, Tag

INDEXES = ("devices_profile_state_idx", "devices_group_revoked_idx",
           "devices_device_tags_tag_device_idx")
BEFORE = "0011_device_trusted_kids"
MIGRATION = "0012_device_list_indexes"

postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'",
                                   reason="concurrent index builds are PostgreSQL's")


def _migrate(target: str) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([("devices", target)])


def _latest() -> str:
    return MigrationExecutor(connection).loader.graph.leaf_nodes("devices")[0][1]


def _indexes() -> dict[str, bool]:
    """The list's indexes that exist, each with whether it is valid (PostgreSQL's
    pg_index.indisvalid; an index SQLite has is always valid)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT c.relname, i.indisvalid FROM pg_index i"
                           " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = ANY(%s)",
                           [list(INDEXES)])
            return dict(cursor.fetchall())
        names = set()
        for table in ("devices_device", "devices_device_tags"):
            names |= set(connection.introspection.get_constraints(cursor, table))
    return {name: True for name in INDEXES if name in names}


def _applied() -> bool:
    return MigrationRecorder(connection).migration_qs.filter(
        app="devices", name=MIGRATION).exists()


def _raw_connection() -> Any:
    """A second session on the test database (psycopg, autocommit off): a writer of the fleet."""
    return connection.get_new_connection(connection.get_connection_params())


def _wait_for_build_waiting(timeout: float = 20.0) -> None:
    """Return once a session's index build waits for a lock (a writer's transaction to end)."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                           " current_database() AND query LIKE 'CREATE INDEX %%'"
                           " AND wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError("no index build waited")


@pytest.fixture
def before_indexes(transactional_db: Any, hardware_profile: HardwareProfile) -> Iterator[Device]:
    """Devices migrated back to before 0012 (a device and a tag in the tables); migrated
    forward again after the test, whatever it left."""
    device = Device.objects.create(uid="unit-1", hardware_profile=hardware_profile,
                                   public_key_pem="-", public_key_fingerprint="0" * 64)
    _migrate(BEFORE)
    try:
        yield device
    finally:
        _migrate(_latest())
        assert _indexes() == dict.fromkeys(INDEXES, True)


@postgres_only
@pytest.mark.postgres
@pytest.mark.django_db
def test_sqlmigrate_builds_each_index_concurrently_outside_a_transaction() -> None:
    out = StringIO()
    call_command("sqlmigrate", "devices", MIGRATION, stdout=out)
    statements = [line for line in out.getvalue().splitlines() if line and line[0] != "-"]
    assert len(statements) == len(INDEXES)
    for name, sql in zip(INDEXES, statements, strict=True):
        assert sql.startswith(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON ')
    assert "BEGIN" not in out.getvalue()


@postgres_only
@pytest.mark.postgres
def test_migrating_builds_the_indexes_concurrently_and_valid(before_indexes: Device) -> None:
    assert _indexes() == {}  # migrating back dropped them
    with CaptureQueriesContext(connection) as queries:
        _migrate(MIGRATION)
    creates = [q["sql"] for q in queries if q["sql"].startswith("CREATE INDEX")]
    assert [sql.split('"')[1] for sql in creates] == list(INDEXES)
    assert all(sql.startswith("CREATE INDEX CONCURRENTLY IF NOT EXISTS ") for sql in creates)
    assert _indexes() == dict.fromkeys(INDEXES, True)
    assert _applied()


@postgres_only
@pytest.mark.postgres
def test_writes_go_on_while_an_index_builds(before_indexes: Device) -> None:
    """A build waits for a writer in flight; another device's update meanwhile commits (a
    plain CREATE INDEX, queued for its SHARE lock, would hold that update until the end)."""
    failures: list[BaseException] = []

    def migrate() -> None:
        try:
            _migrate(MIGRATION)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
        finally:
            connection.close()

    Device.objects.create(uid="unit-2", hardware_profile=before_indexes.hardware_profile,
                          public_key_pem="-", public_key_fingerprint="1" * 64)
    in_flight, other = _raw_connection(), _raw_connection()
    builder = threading.Thread(target=migrate)
    try:
        in_flight.execute("UPDATE devices_device SET name = 'in flight' WHERE uid = 'unit-1'")
        builder.start()
        _wait_for_build_waiting()
        other.execute("SET lock_timeout = '3s'")
        started = time.monotonic()
        other.execute("UPDATE devices_device SET name = 'meanwhile' WHERE uid = 'unit-2'")
        other.commit()
        assert time.monotonic() - started < 1
        assert builder.is_alive()  # still waiting for the writer in flight
        in_flight.commit()
        builder.join(30)
    finally:
        in_flight.close()
        other.close()
        builder.join(30)
    assert not failures
    assert _indexes() == dict.fromkeys(INDEXES, True)


@postgres_only
@pytest.mark.postgres
def test_a_failed_build_leaves_an_invalid_index_that_the_next_run_rebuilds(
        before_indexes: Device) -> None:
    """A tag written in a long transaction makes the tag index's build time out: the two device
    indexes are built, the tag index is left INVALID and 0012 unrecorded. The next run keeps
    the two (no "already exists") and drops and rebuilds the third."""
    tag = Tag.objects.create(name="batch-7")
    writer = _raw_connection()
    try:
        writer.execute("INSERT INTO devices_device_tags (device_id, tag_id) VALUES (%s, %s)",
                       [before_indexes.pk, tag.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = '1s'")
        try:
            with pytest.raises(OperationalError, match="statement timeout"):
                _migrate(MIGRATION)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")
        assert _indexes() == {INDEXES[0]: True, INDEXES[1]: True, INDEXES[2]: False}
        assert not _applied()
        writer.commit()
    finally:
        writer.close()
    with CaptureQueriesContext(connection) as queries:
        _migrate(MIGRATION)
    assert _indexes() == dict.fromkeys(INDEXES, True)
    assert f'DROP INDEX CONCURRENTLY IF EXISTS "{INDEXES[2]}"' in [q["sql"] for q in queries]
    assert _applied()
    assert list(Device.objects.filter(tags=tag)) == [before_indexes]


@pytest.mark.skipif("connection.vendor != 'sqlite'", reason="SQLite's plain build")
def test_sqlite_builds_plainly_and_reruns_after_a_partial_run(before_indexes: Device) -> None:
    """SQLite builds with a plain CREATE INDEX; an index a partial run built is kept."""
    assert _indexes() == {}
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE INDEX "{INDEXES[0]}" ON devices_device (hardware_profile_id,'
                       ' state)')
    with CaptureQueriesContext(connection) as queries:
        _migrate(MIGRATION)
    creates = [q["sql"] for q in queries if q["sql"].startswith("CREATE INDEX")]
    assert [sql.split('"')[1] for sql in creates] == list(INDEXES[1:])
    assert not any("CONCURRENTLY" in q["sql"] for q in queries)
    assert _indexes() == dict.fromkeys(INDEXES, True)
    assert _applied()


@pytest.mark.django_db
def test_the_migration_state_matches_the_models() -> None:
    """The concurrent operations keep AddIndex's state: makemigrations finds nothing to do."""
    call_command("makemigrations", "devices", "--check", "--dry-run", stdout=StringIO())
