"""Nouns of telemetry: raw events, ingested batches (the dedupe key), rollups, dead letters,
worker statistics.

Raw rows reference devices and model versions by plain integer ids (no foreign-key checks):
ingest writes them in bulk (COPY on PostgreSQL) and retention drops them by time.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.backends.ddl_references import Statement


class TimeIndex(models.Index):
    """An index on a time column that only grows: BRIN on PostgreSQL, a btree elsewhere.

    A BRIN index keeps one summary per range of table pages, so appending rows costs almost
    nothing (a btree on the raw event table halved COPY throughput); it serves range scans
    on a column that follows insertion order, like the time of raw events. SQLite has no BRIN.
    """

    def create_sql(self, model: type[models.Model], schema_editor: BaseDatabaseSchemaEditor,
                   using: str = "", **kwargs: Any) -> Statement:
        """Return the CREATE INDEX statement, with ``USING brin`` on PostgreSQL."""
        if schema_editor.connection.vendor == "postgresql":
            using = " USING brin"
        return super().create_sql(model, schema_editor, using=using, **kwargs)


class IngestedBatch(models.Model):
    """One accepted event batch or summary; (device, seq) unique makes ingest exactly-once."""

    device_id = models.BigIntegerField()
    seq = models.BigIntegerField()
    kind = models.PositiveSmallIntegerField(help_text="0 batch, 1 summary (wire MessageKind)")
    model_version_id = models.IntegerField(default=0, help_text="0: unknown model")
    package_id = models.IntegerField(default=0)
    t0 = models.DateTimeField()
    event_count = models.PositiveIntegerField()
    digest = models.BigIntegerField(
        default=0, help_text="63 bits of the message's BLAKE2b: tells a redelivery (same) from "
                             "another batch reusing the sequence number (different)")
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device_id", "seq"], name="unique_device_seq")
        ]


class Event(models.Model):
    """One inference result as the device reported it.

    Append-only and read by time only (queries read rollups; retention deletes by time), so
    its only index is a BRIN on ``ts``: every btree costs ingest throughput (COPY) for no
    reader. On PostgreSQL that includes the one on ``id`` (migration 0004): ids come from the
    identity sequence and stay unique, but nothing indexes them, so never look an event up by
    id there.
    """

    device_id = models.BigIntegerField()
    model_version_id = models.IntegerField(default=0)
    seq = models.BigIntegerField(help_text="the batch it came in")
    ts = models.DateTimeField()
    label = models.SmallIntegerField()
    score = models.SmallIntegerField(help_text="top-1 confidence, 0..255")
    latency_100us = models.IntegerField()

    class Meta:
        indexes = [TimeIndex(fields=["ts"], name="telemetry_event_ts_time")]


# Latency histogram bucket upper bounds in 100 µs units (1, 5, 20, 100 ms; last is open).
LATENCY_BOUNDS_100US = (10, 50, 200, 1000)


class RollupCells(models.Model):
    """The counts of one (model version, minute, label) cell, shared by both rollup tables."""

    model_version_id = models.IntegerField(default=0)
    bucket = models.DateTimeField(help_text="start of the minute")
    label = models.SmallIntegerField()
    count = models.BigIntegerField(default=0)
    score_sum = models.BigIntegerField(default=0)
    latency_sum = models.BigIntegerField(default=0, help_text="100 µs units")
    lat_le_1ms = models.BigIntegerField(default=0)
    lat_le_5ms = models.BigIntegerField(default=0)
    lat_le_20ms = models.BigIntegerField(default=0)
    lat_le_100ms = models.BigIntegerField(default=0)
    lat_gt_100ms = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class Rollup(RollupCells):
    """Counts per (device, model version, minute, label), kept up to date at ingest.

    Queries read these, never the raw events; retention keeps them when raw events go.
    """

    device_id = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device_id", "model_version_id", "bucket", "label"],
                                    name="unique_rollup_key")
        ]
        # Cells arrive in time order, so time alone takes a BRIN (cheap at ingest, where every
        # new cell pays for each btree); the unique key serves device-led reads and the
        # (model version, time) btree the comparisons of two versions.
        indexes = [TimeIndex(fields=["bucket"], name="telemetry_rollup_bucket_time"),
                   models.Index(fields=["model_version_id", "bucket"])]


class FleetRollup(RollupCells):
    """Rollups summed over every device, per (model version, minute, label): what a query
    over the whole fleet reads on PostgreSQL instead of one row per device and minute.

    Kept exactly in step with ``Rollup`` by statement triggers on PostgreSQL (migration 0008:
    any insert, upsert, update or delete of rollups adds its difference here, in the same
    transaction), so exactly-once ingest holds for it too. ``shard`` (the writing session's
    pid modulo 4) lets concurrent workers update the current minute without waiting for each
    other's row locks; readers sum the shards. SQLite does not maintain it (queries there
    read ``Rollup``).
    """

    shard = models.SmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_version_id", "bucket", "label", "shard"],
                                    name="unique_fleet_rollup_key")
        ]
        indexes = [TimeIndex(fields=["bucket"], name="telemetry_fleetrollup_time")]


# Width of a segment rollup's bucket: every series bucket of 15 min or more is a whole number
# of them (date_bin from the epoch), so those series read segments and nothing finer.
SEGMENT_BUCKET_S = 900


class SegmentRollup(RollupCells):
    """Rollups summed over the devices now in one group or of one hardware profile, per
    (segment, 15 minutes, model version, label): what a query for a group or profile reads on
    PostgreSQL instead of one row per device and minute. The whole fleet is a segment too
    (kind 0, every rollup): 15-minute rows for ranges of days, where ``FleetRollup`` has one
    per minute.

    Membership is the device's current one, as the per-device queries have it: triggers
    (migration 0009) add every change of ``Rollup`` to the segments of its device, and move a
    device's rollups when its group or profile changes or the device goes, in the same
    transaction. ``shard`` as in ``FleetRollup``. SQLite does not maintain it.
    """

    FLEET = 0
    GROUP = 1
    PROFILE = 2

    kind = models.SmallIntegerField(help_text="0 the whole fleet, 1 device group, 2 hardware "
                                              "profile")
    segment_id = models.BigIntegerField(help_text="the group's or profile's id")
    bucket = models.DateTimeField(help_text="start of the 15 minutes")
    shard = models.SmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "segment_id", "bucket", "model_version_id", "label", "shard"],
                name="unique_segment_rollup_key")
        ]


class ReportingSpan(models.Model):
    """The first and last minute with rollups of one (device, model version): how a count of
    the devices reporting in a range skips the devices that cannot have (PostgreSQL).

    A device reported with the version in [since, until) when its first or last minute falls
    in the range; not when it ends before or starts after; only a span covering the whole range
    needs a look at its rollups. Kept exactly equal to min/max of ``Rollup.bucket`` by
    statement triggers (migration 0010): inserts widen spans, deletes and key-changing updates
    recompute theirs. SQLite does not maintain it.
    """

    device_id = models.BigIntegerField()
    model_version_id = models.IntegerField()
    first_bucket = models.DateTimeField()
    last_bucket = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device_id", "model_version_id"],
                                    name="unique_reporting_span")
        ]
        indexes = [models.Index(fields=["model_version_id", "last_bucket"],
                                name="telemetry_span_version_last")]


class DeadLetter(models.Model):
    """A device message refused at ingest, kept (truncated) with the reason, for diagnosis."""

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    topic = models.CharField(max_length=200)
    device_uid = models.CharField(max_length=64, blank=True, db_index=True)
    reason = models.CharField(max_length=40, db_index=True, help_text="wire Reason name")
    detail = models.CharField(max_length=300, blank=True)
    size = models.PositiveIntegerField()
    payload = models.BinaryField(help_text="first bytes of the payload")

    class Meta:
        ordering = ["-received_at"]


class WorkerStats(models.Model):
    """Counters one worker process reports every few seconds (for /metrics and the console)."""

    worker = models.CharField(max_length=100, unique=True)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()
    counters = models.JSONField(default=dict)
    # A live peer that found this worker's heartbeat stale drains its broker session
    # (fleet/intake/drain.py): it claims the row (drained_by, drain_until: the claim lapses
    # unless renewed), then marks it retired. A worker that reports again clears all three.
    drained_by = models.CharField(max_length=100, blank=True, default="")
    drain_until = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
