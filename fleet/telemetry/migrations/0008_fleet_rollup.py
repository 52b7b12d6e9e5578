"""Fleet-wide rollups (``FleetRollup``), kept in step with ``Rollup`` by triggers on PostgreSQL.

A query over the whole fleet read one rollup row per device and minute (a day of a
10,000-device fleet: ~330,000 rows); the fleet table has one per version, minute and label
(and shard). Statement triggers with transition tables add the difference of every insert,
upsert, update or delete of ``telemetry_rollup`` to it, in the same transaction: whatever
writes rollups (ingest's upsert, a bulk insert, a delete) the two agree. Existing rollups are
summed into it here. The BRIN on the rollups' time summarizes new page ranges as they fill
(``autosummarize``), so recent ranges stay narrow between vacuums. SQLite: table only.
"""

import fleet.telemetry.models
from django.db import migrations, models

_SUMS = ("count", "score_sum", "latency_sum", "lat_le_1ms", "lat_le_5ms", "lat_le_20ms",
         "lat_le_100ms", "lat_gt_100ms")
_KEY = "model_version_id, bucket, label"


def _delta_sql(parts: str) -> str:
    """Upsert the sums of ``parts`` (a query yielding key and signed sums) into the fleet
    table, in key order (concurrent writers lock rows in the same order)."""
    sums = ", ".join(f"sum({c})" for c in _SUMS)
    updates = ", ".join(f"{c} = telemetry_fleetrollup.{c} + excluded.{c}" for c in _SUMS)
    return (
        f"INSERT INTO telemetry_fleetrollup (shard, {_KEY}, {', '.join(_SUMS)})"
        f" SELECT mod(pg_backend_pid(), 4)::smallint, {_KEY}, {sums} FROM ({parts}) AS d"
        f" GROUP BY {_KEY} ORDER BY {_KEY}"
        f" ON CONFLICT (model_version_id, bucket, label, shard) DO UPDATE SET {updates}")


def _rows(table: str, sign: str) -> str:
    return f"SELECT {_KEY}, " + ", ".join(f"{sign}{c} AS {c}" for c in _SUMS) + f" FROM {table}"


_FUNCTIONS = {
    "insert": _delta_sql(_rows("new_rows", "")),
    "update": _delta_sql(_rows("new_rows", "") + " UNION ALL " + _rows("old_rows", "-")),
    "delete": _delta_sql(_rows("old_rows", "-")),
}
_REFERENCING = {"insert": "NEW TABLE AS new_rows",
                "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                "delete": "OLD TABLE AS old_rows"}


def _install(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor != "postgresql":
        return
    for op, body in _FUNCTIONS.items():
        schema_editor.execute(
            f"CREATE FUNCTION telemetry_fleetrollup_{op}() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN {body}; RETURN NULL; END $$")
        schema_editor.execute(
            f"CREATE TRIGGER telemetry_rollup_fleet_{op} AFTER {op.upper()} ON telemetry_rollup"
            f" REFERENCING {_REFERENCING[op]} FOR EACH STATEMENT"
            f" EXECUTE FUNCTION telemetry_fleetrollup_{op}()")
    # No TRUNCATE trigger: truncating the fleet table from it fails when one statement
    # truncates both (Django's flush); truncate them together.
    schema_editor.execute(
        f"INSERT INTO telemetry_fleetrollup (shard, {_KEY}, {', '.join(_SUMS)})"
        f" SELECT 0, {_KEY}, " + ", ".join(f"sum({c})" for c in _SUMS)
        + f" FROM telemetry_rollup GROUP BY {_KEY} ORDER BY bucket")
    schema_editor.execute("ALTER INDEX telemetry_rollup_bucket_time SET (autosummarize = on)")


def _uninstall(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor != "postgresql":
        return
    for op in _FUNCTIONS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS telemetry_rollup_fleet_{op} ON"
                              " telemetry_rollup")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS telemetry_fleetrollup_{op}()")
    schema_editor.execute("ALTER INDEX telemetry_rollup_bucket_time RESET (autosummarize)")


class Migration(migrations.Migration):

    dependencies = [
        ('telemetry', '0007_partition_events_by_day'),
    ]

    operations = [
        migrations.CreateModel(
            name='FleetRollup',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('shard', models.SmallIntegerField(default=0)),
                ('model_version_id', models.IntegerField(default=0)),
                ('bucket', models.DateTimeField(help_text='start of the minute')),
                ('label', models.SmallIntegerField()),
                ('count', models.BigIntegerField(default=0)),
                ('score_sum', models.BigIntegerField(default=0)),
                ('latency_sum', models.BigIntegerField(default=0, help_text='100 µs units')),
                ('lat_le_1ms', models.BigIntegerField(default=0)),
                ('lat_le_5ms', models.BigIntegerField(default=0)),
                ('lat_le_20ms', models.BigIntegerField(default=0)),
                ('lat_le_100ms', models.BigIntegerField(default=0)),
                ('lat_gt_100ms', models.BigIntegerField(default=0)),
            ],
            options={
                'indexes': [fleet.telemetry.models.TimeIndex(fields=['bucket'], name='telemetry_fleetrollup_time')],
                'constraints': [models.UniqueConstraint(fields=('model_version_id', 'bucket', 'label', 'shard'), name='unique_fleet_rollup_key')],
            },
        ),
        migrations.RunPython(_install, _uninstall),
    ]
