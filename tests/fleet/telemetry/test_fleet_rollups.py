"""Fleet-wide rollups on PostgreSQL: triggers keep them equal to the per-device rollups summed
over devices, whatever writes those; fleet-wide queries read them (and the fleet's 15-minute
segment rollups) and answer the same."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Sum

from fleet.telemetry import queries
from fleet.telemetry.models import FleetRollup, Rollup, SegmentRollup

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]
SUMS = ("count", "score_sum", "latency_sum", "lat_le_1ms", "lat_le_5ms", "lat_le_20ms",
        "lat_le_100ms", "lat_gt_100ms")
START = datetime(2026, 4, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the fleet rollups are maintained by PostgreSQL triggers")


def _by_key(model: type) -> dict:
    rows = model.objects.values("model_version_id", "bucket", "label").annotate(
        **{f: Sum(f) for f in SUMS})
    return {(r["model_version_id"], r["bucket"], r["label"]): tuple(r[f] for f in SUMS)
            for r in rows if r["count"]}


def _fill(seed: int = 3) -> None:
    rng = random.Random(seed)
    Rollup.objects.bulk_create([
        Rollup(device_id=d, model_version_id=mv, bucket=START + timedelta(minutes=m), label=lab,
               count=(n := rng.randint(1, 9)), score_sum=n * rng.randint(90, 250),
               latency_sum=n * rng.randint(5, 900), lat_le_5ms=n)
        for d in range(1, 8) for mv in (1, 2) for m in range(0, 90, 7) for lab in range(3)
        if rng.random() < 0.6])


def test_triggers_follow_inserts_upserts_updates_and_deletes() -> None:
    _fill()
    assert _by_key(FleetRollup) == _by_key(Rollup)
    with connection.cursor() as cursor:  # ingest's upsert: conflicts update existing cells
        cursor.execute(
            "INSERT INTO telemetry_rollup (device_id, model_version_id, bucket, label, count,"
            " score_sum, latency_sum, lat_le_1ms, lat_le_5ms, lat_le_20ms, lat_le_100ms,"
            " lat_gt_100ms) SELECT device_id, model_version_id, bucket, label, 2, 300, 40, 2,"
            " 0, 0, 0, 0 FROM telemetry_rollup WHERE device_id IN (1, 2) UNION ALL SELECT 99, 1,"
            " %s, 0, 1, 100, 10, 1, 0, 0, 0, 0 ON CONFLICT (device_id, model_version_id, bucket,"
            " label) DO UPDATE SET count = telemetry_rollup.count + excluded.count, score_sum ="
            " telemetry_rollup.score_sum + excluded.score_sum, latency_sum ="
            " telemetry_rollup.latency_sum + excluded.latency_sum, lat_le_1ms ="
            " telemetry_rollup.lat_le_1ms + excluded.lat_le_1ms", [START])
    assert _by_key(FleetRollup) == _by_key(Rollup)
    Rollup.objects.filter(device_id=3, model_version_id=2).update(model_version_id=5, count=1)
    assert _by_key(FleetRollup) == _by_key(Rollup)
    Rollup.objects.filter(label=1).delete()
    assert _by_key(FleetRollup) == _by_key(Rollup)
    Rollup.objects.all().delete()
    assert _by_key(FleetRollup) == {}


def test_fleet_wide_queries_answer_as_the_per_device_rollups(monkeypatch) -> None:  # noqa: ANN001
    _fill(4)
    flt = queries.TelemetryFilter(since=START, until=START + timedelta(hours=2))
    assert [qs.model for qs in flt.cell_sets(300)] == [FleetRollup]  # finer than 15 min
    assert [qs.model for qs in flt.cell_sets(900)] == [SegmentRollup]  # whole quarters
    fleet = (queries.series(flt, 300), queries.series(flt, 3600), queries.label_distribution(flt),
             queries.summary(flt), queries.compare_versions(flt, 1, 2))
    monkeypatch.setattr(queries.TelemetryFilter, "cell_sets",
                        lambda self, bucket_s=None: [self.rollups()])
    per_device = (queries.series(flt, 300), queries.series(flt, 3600),
                  queries.label_distribution(flt), queries.summary(flt),
                  queries.compare_versions(flt, 1, 2))
    assert fleet == per_device
    narrowed = queries.TelemetryFilter(since=START, until=START + timedelta(hours=2),
                                       device_uid="nobody")
    assert [qs.model for qs in narrowed.cell_sets()] == [Rollup]
