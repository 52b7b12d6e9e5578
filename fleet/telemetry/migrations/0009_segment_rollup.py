"""Segment rollups (``SegmentRollup``): rollups summed per device group and hardware profile
per 15 minutes, kept in step by triggers on PostgreSQL.

A query for one group (500 devices, 7 days) read ~116,000 per-device rollup rows scattered
over a week of the table (615–871 ms); its segment has ~16 rows per 15 minutes. One more
segment is the whole fleet (kind 0: every rollup, as ``FleetRollup`` per minute), for ranges
of days. Membership is the device's current group and profile (what the per-device queries
select), so:

- statement triggers on ``telemetry_rollup`` add the difference of every insert, upsert,
  update or delete to the segments of the rows' devices, in the same transaction (as
  migration 0008 does for the fleet); they lock those devices' rows first (FOR NO KEY
  UPDATE, which ingest's last-seen update takes anyway), so a concurrent move of a device
  waits for them or they see its new group;
- row triggers on ``devices_device`` move a device's rollups between segments when its group
  or profile changes, and take them out when the device is deleted (in when one is created
  with rollups already stored under its id).

Existing rollups are summed into the segments here. SQLite: table only (queries read
``Rollup`` there).
"""

from django.db import migrations, models

_SUMS = ("count", "score_sum", "latency_sum", "lat_le_1ms", "lat_le_5ms", "lat_le_20ms",
         "lat_le_100ms", "lat_gt_100ms")
_KEY = "kind, segment_id, bucket, model_version_id, label"
_QUARTER = "date_bin('900 seconds', p.bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00')"


def _upsert(select_from: str, shard: str = "mod(pg_backend_pid(), 4)::smallint") -> str:
    """Upsert signed sums into the segments: ``select_from`` is the FROM/WHERE part over
    ``p`` (rollup rows with a ``sign``) and ``k`` (kind, segment_id), grouped by key and
    upserted in key order (concurrent writers lock rows in one order)."""
    sums = ", ".join(f"sum(k.sign * p.{c})" for c in _SUMS)
    updates = ", ".join(f"{c} = telemetry_segmentrollup.{c} + excluded.{c}" for c in _SUMS)
    return (
        f"INSERT INTO telemetry_segmentrollup (shard, {_KEY}, {', '.join(_SUMS)})"
        f" SELECT {shard}, k.kind, k.segment_id, {_QUARTER}, p.model_version_id, p.label,"
        f" {sums} {select_from} GROUP BY 2, 3, 4, 5, 6 ORDER BY 2, 3, 4, 5, 6"
        f" ON CONFLICT (kind, segment_id, bucket, model_version_id, label, shard)"
        f" DO UPDATE SET {updates}")


def _rows(table: str, sign: int) -> str:
    return (f"SELECT device_id, model_version_id, bucket, label, {sign} AS sign, "
            + ", ".join(_SUMS) + f" FROM {table}")


def _delta(parts: str) -> str:
    """The rollup trigger's statement: lock the devices of ``parts`` (in id order), then add
    ``parts`` to their current segments."""
    return (
        f"WITH p AS MATERIALIZED ({parts}), d AS MATERIALIZED (SELECT id, group_id,"
        " hardware_profile_id FROM devices_device WHERE id IN (SELECT device_id FROM p)"
        " ORDER BY id FOR NO KEY UPDATE) "
        + _upsert("FROM p LEFT JOIN d ON d.id = p.device_id CROSS JOIN LATERAL (VALUES"
                  " (0::smallint, 0::bigint, p.sign), (1::smallint, d.group_id::bigint, p.sign),"
                  " (2::smallint, d.hardware_profile_id::bigint, p.sign))"
                  " AS k(kind, segment_id, sign) WHERE k.segment_id IS NOT NULL"))


_FUNCTIONS = {
    "insert": _delta(_rows("new_rows", 1)),
    "update": _delta(_rows("new_rows", 1) + " UNION ALL " + _rows("old_rows", -1)),
    "delete": _delta(_rows("old_rows", -1)),
}
_REFERENCING = {"insert": "NEW TABLE AS new_rows",
                "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                "delete": "OLD TABLE AS old_rows"}

# A device's rollups leave its old segments and join its new ones.
_MOVE = (
    "CREATE FUNCTION telemetry_segment_device_move() RETURNS trigger LANGUAGE plpgsql AS $$"
    " DECLARE dev bigint; og bigint; ng bigint; op bigint; np bigint;"
    " BEGIN"
    " IF TG_OP <> 'INSERT' THEN dev := OLD.id; og := OLD.group_id;"
    " op := OLD.hardware_profile_id; END IF;"
    " IF TG_OP <> 'DELETE' THEN dev := NEW.id; ng := NEW.group_id;"
    " np := NEW.hardware_profile_id; END IF;"
    " IF og IS NOT DISTINCT FROM ng THEN og := NULL; ng := NULL; END IF;"
    " IF op IS NOT DISTINCT FROM np THEN op := NULL; np := NULL; END IF;"
    " IF num_nonnulls(og, ng, op, np) = 0 THEN RETURN NULL; END IF; "
    + _upsert("FROM telemetry_rollup p CROSS JOIN (VALUES (1::smallint, og, -1), (1::smallint,"
              " ng, 1), (2::smallint, op, -1), (2::smallint, np, 1)) AS k(kind, segment_id,"
              " sign) WHERE p.device_id = dev AND k.segment_id IS NOT NULL")
    + "; RETURN NULL; END $$")
_DEVICE_TRIGGERS = {
    "insert": "AFTER INSERT",
    "update": "AFTER UPDATE OF group_id, hardware_profile_id",
    "delete": "AFTER DELETE",
}
_DEVICE_WHEN = {"update": " WHEN (OLD.group_id IS DISTINCT FROM NEW.group_id OR"
                          " OLD.hardware_profile_id IS DISTINCT FROM NEW.hardware_profile_id)"}


def _install(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor != "postgresql":
        return
    for op, body in _FUNCTIONS.items():
        schema_editor.execute(
            f"CREATE FUNCTION telemetry_segmentrollup_{op}() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN {body}; RETURN NULL; END $$")
        schema_editor.execute(
            f"CREATE TRIGGER telemetry_rollup_segment_{op} AFTER {op.upper()} ON"
            f" telemetry_rollup REFERENCING {_REFERENCING[op]} FOR EACH STATEMENT"
            f" EXECUTE FUNCTION telemetry_segmentrollup_{op}()")
    schema_editor.execute(_MOVE)
    for op, when in _DEVICE_TRIGGERS.items():
        schema_editor.execute(
            f"CREATE TRIGGER telemetry_segment_device_{op} {when} ON devices_device"
            f" FOR EACH ROW{_DEVICE_WHEN.get(op, '')}"
            " EXECUTE FUNCTION telemetry_segment_device_move()")
    # No TRUNCATE trigger (as for the fleet rollups): truncate them together.
    schema_editor.execute(_upsert(
        "FROM (SELECT r.*, 1 AS sign FROM telemetry_rollup r) p LEFT JOIN devices_device d"
        " ON d.id = p.device_id CROSS JOIN LATERAL (VALUES (0::smallint, 0::bigint, 1),"
        " (1::smallint, d.group_id::bigint, 1), (2::smallint, d.hardware_profile_id::bigint,"
        " 1)) AS k(kind, segment_id, sign)"
        " WHERE k.segment_id IS NOT NULL", shard="0::smallint"))


def _uninstall(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor != "postgresql":
        return
    for op in _FUNCTIONS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS telemetry_rollup_segment_{op} ON"
                              " telemetry_rollup")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS telemetry_segmentrollup_{op}()")
    for op in _DEVICE_TRIGGERS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS telemetry_segment_device_{op} ON"
                              " devices_device")
    schema_editor.execute("DROP FUNCTION IF EXISTS telemetry_segment_device_move()")


class Migration(migrations.Migration):

    dependencies = [
        ('telemetry', '0008_fleet_rollup'),
        ('devices', '0011_device_trusted_kids'),
    ]

    operations = [
        migrations.CreateModel(
            name='SegmentRollup',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('model_version_id', models.IntegerField(default=0)),
                ('label', models.SmallIntegerField()),
                ('count', models.BigIntegerField(default=0)),
                ('score_sum', models.BigIntegerField(default=0)),
                ('latency_sum', models.BigIntegerField(default=0, help_text='100 µs units')),
                ('lat_le_1ms', models.BigIntegerField(default=0)),
                ('lat_le_5ms', models.BigIntegerField(default=0)),
                ('lat_le_20ms', models.BigIntegerField(default=0)),
                ('lat_le_100ms', models.BigIntegerField(default=0)),
                ('lat_gt_100ms', models.BigIntegerField(default=0)),
                ('kind', models.SmallIntegerField(help_text='0 the whole fleet, 1 device group, 2 hardware profile')),
                ('segment_id', models.BigIntegerField(help_text="the group's or profile's id")),
                ('bucket', models.DateTimeField(help_text='start of the 15 minutes')),
                ('shard', models.SmallIntegerField(default=0)),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('kind', 'segment_id', 'bucket', 'model_version_id', 'label', 'shard'), name='unique_segment_rollup_key')],
            },
        ),
        migrations.RunPython(_install, _uninstall),
    ]
