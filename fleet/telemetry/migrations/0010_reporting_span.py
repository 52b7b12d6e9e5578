"""Reporting spans (``ReportingSpan``): first and last rollup minute per (device, version),
kept equal to the rollups by statement triggers on PostgreSQL.

Counting the devices that reported in a range hashed every rollup of the range (the whole
fleet's day: ~330,000 rows, 215 ms; a 500-device group's week ~116,000): with spans, only
devices whose span covers the whole range are looked up in the rollups (one probe each).

- inserts widen the spans of their (device, version) pairs (ingest: one row per device and
  version of the batch, written only when the span grows);
- deletes, and updates that change a rollup's device, version or minute (ingest's upsert only
  adds to sums: nothing to do), lock their pairs' spans, then recompute them from the rollups'
  unique index and drop the spans left without rollups.

Existing rollups are summed into spans here. SQLite: table only.
"""

from django.db import migrations, models

_WIDEN = (
    "INSERT INTO telemetry_reportingspan (device_id, model_version_id, first_bucket,"
    " last_bucket) SELECT device_id, model_version_id, min(bucket), max(bucket) FROM {rows}"
    " GROUP BY 1, 2 ORDER BY 1, 2 ON CONFLICT (device_id, model_version_id) DO UPDATE SET"
    " first_bucket = least(telemetry_reportingspan.first_bucket, excluded.first_bucket),"
    " last_bucket = greatest(telemetry_reportingspan.last_bucket, excluded.last_bucket)"
    " WHERE excluded.first_bucket < telemetry_reportingspan.first_bucket"
    " OR excluded.last_bucket > telemetry_reportingspan.last_bucket")


def _recompute(pairs: str) -> str:
    """Recompute the spans of the (device, version) ``pairs`` from the rollups.

    Two statements: lock the spans first (in key order), then read the rollups with a new
    snapshot. An ingest that widened one of them before commits first and is seen; one that
    widens it after waits for this transaction and widens the recomputed span.
    """
    return (
        "PERFORM 1 FROM telemetry_reportingspan s WHERE (s.device_id, s.model_version_id) IN"
        f" (SELECT device_id, model_version_id FROM ({pairs}) AS p) ORDER BY s.device_id,"
        " s.model_version_id FOR UPDATE; "
        f"WITH c AS MATERIALIZED (SELECT DISTINCT device_id, model_version_id FROM ({pairs})"
        " AS p), gone AS (DELETE FROM telemetry_reportingspan s USING c WHERE s.device_id ="
        " c.device_id AND s.model_version_id = c.model_version_id AND NOT EXISTS (SELECT 1"
        " FROM telemetry_rollup r WHERE r.device_id = c.device_id AND r.model_version_id ="
        " c.model_version_id)) INSERT INTO telemetry_reportingspan (device_id,"
        " model_version_id, first_bucket, last_bucket) SELECT c.device_id, c.model_version_id,"
        " m.lo, m.hi FROM c CROSS JOIN LATERAL (SELECT min(bucket) AS lo, max(bucket) AS hi"
        " FROM telemetry_rollup r WHERE r.device_id = c.device_id AND r.model_version_id ="
        " c.model_version_id) AS m WHERE m.lo IS NOT NULL ORDER BY 1, 2 ON CONFLICT"
        " (device_id, model_version_id) DO UPDATE SET first_bucket = excluded.first_bucket,"
        " last_bucket = excluded.last_bucket")


_KEYS = "SELECT device_id, model_version_id, bucket FROM {}"
_FUNCTIONS = {
    "insert": _WIDEN.format(rows="new_rows"),
    "update": _recompute(f"({_KEYS.format('old_rows')} EXCEPT {_KEYS.format('new_rows')})"
                         f" UNION ALL ({_KEYS.format('new_rows')} EXCEPT"
                         f" {_KEYS.format('old_rows')})"),
    "delete": _recompute(_KEYS.format("old_rows")),
}
_REFERENCING = {"insert": "NEW TABLE AS new_rows",
                "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                "delete": "OLD TABLE AS old_rows"}


def _install(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor != "postgresql":
        return
    for op, body in _FUNCTIONS.items():
        schema_editor.execute(
            f"CREATE FUNCTION telemetry_reportingspan_{op}() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN {body}; RETURN NULL; END $$")
        schema_editor.execute(
            f"CREATE TRIGGER telemetry_rollup_span_{op} AFTER {op.upper()} ON"
            f" telemetry_rollup REFERENCING {_REFERENCING[op]} FOR EACH STATEMENT"
            f" EXECUTE FUNCTION telemetry_reportingspan_{op}()")
    schema_editor.execute(_WIDEN.format(rows="telemetry_rollup"))


def _uninstall(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor != "postgresql":
        return
    for op in _FUNCTIONS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS telemetry_rollup_span_{op} ON"
                              " telemetry_rollup")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS telemetry_reportingspan_{op}()")


class Migration(migrations.Migration):

    dependencies = [
        ('telemetry', '0009_segment_rollup'),
    ]

    operations = [
        migrations.CreateModel(
            name='ReportingSpan',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('device_id', models.BigIntegerField()),
                ('model_version_id', models.IntegerField()),
                ('first_bucket', models.DateTimeField()),
                ('last_bucket', models.DateTimeField()),
            ],
            options={
                'indexes': [models.Index(fields=['model_version_id', 'last_bucket'], name='telemetry_span_version_last')],
                'constraints': [models.UniqueConstraint(fields=('device_id', 'model_version_id'), name='unique_reporting_span')],
            },
        ),
        migrations.RunPython(_install, _uninstall),
    ]
