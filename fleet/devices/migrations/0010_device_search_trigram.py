"""Trigram indexes for the device list's search on PostgreSQL; SQLite is unchanged.

``?search=`` filters ``uid`` and ``name`` with ``UPPER(col) LIKE UPPER('%term%')``: without an
index every search read all devices (160 ms at 100,000 devices here). GIN trigram indexes on
``UPPER(uid)`` and ``UPPER(name)`` answer it from the index. ``pg_trgm`` is a trusted
extension (PostgreSQL 13+): the database owner may create it. Where it cannot be created the
indexes are skipped with a warning and search scans as before.
"""

import logging

from django.db import migrations, transaction

log = logging.getLogger(__name__)


def _create(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception as exc:  # no privilege: search keeps working, unindexed
        log.warning("pg_trgm unavailable (%s): device search stays unindexed", exc)
        return
    for column in ("uid", "name"):
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS devices_device_{column}_trgm ON devices_device"
            f" USING gin (upper({column}::text) gin_trgm_ops)")


def _drop(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in ("uid", "name"):
        schema_editor.execute(f"DROP INDEX IF EXISTS devices_device_{column}_trgm")


class Migration(migrations.Migration):

    dependencies = [
        ("devices", "0009_device_capability_issues"),
    ]

    operations = [migrations.RunPython(_create, _drop)]
