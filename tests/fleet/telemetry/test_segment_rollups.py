"""Group and profile telemetry: the fast path answers exactly what the raw events say.

Events go in through ingest (``store_batches``), devices change group, profile and model
version between ingest calls, and every query (series at 1, 15 and 60 minute points, labels,
summary, comparison) for every filter is checked against a computation from the raw event
rows in Python. Semantics kept: a device counts in the group and profile it is in *now* (what
the per-device queries always selected), an event in the model version it reported.

On PostgreSQL group and profile queries read the segment rollups (migration 0009) for whole
15 minutes and per-device rollups at the ragged ends; the triggers keeping the segments are
also checked directly against the per-device rollups after every kind of change.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import Max, Min, Sum

from device_sdk.protocol.events import Event, EventBatch
from fleet.devices.models import Device, DeviceGroup, HardwareProfile, Tag
from fleet.telemetry import queries
from fleet.telemetry.ingest import Accepted, store_batches
from fleet.telemetry.models import Event as EventRow
from fleet.telemetry.models import FleetRollup, ReportingSpan, Rollup, SegmentRollup

pytestmark = pytest.mark.django_db

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
START = datetime.fromtimestamp(T0 / 1000, tz=UTC)
NOW = START + timedelta(days=1)
SUMS = queries.SUMS


@pytest.fixture
def fleet(hardware_profile: HardwareProfile) -> dict[str, Any]:
    """Twelve devices in two groups (and none), two profiles, one tag on some."""
    other = HardwareProfile.objects.exclude(id=hardware_profile.id).order_by("name").first()
    groups = [DeviceGroup.objects.create(name=f"site-{i}") for i in range(2)]
    tag = Tag.objects.create(name="batch-1")
    devices = []
    for i in range(12):
        d = Device.objects.create(
            uid=f"seg-{i:02d}", hardware_profile=hardware_profile if i % 3 else other,
            group=groups[i % 2] if i % 5 else None, public_key_pem="-",
            public_key_fingerprint=f"seg-{i}", key_algorithm="ed25519")
        if i % 4 == 1:
            d.tags.add(tag)
        devices.append(d)
    return {"devices": devices, "groups": groups, "profiles": [hardware_profile, other]}


def _ingest(devices: list[Device], rng: random.Random, minutes: range, seq0: int,
            version: dict[int, int]) -> None:
    """Store one batch per device of events at random times within ``minutes``."""
    accepted = []
    for d in devices:
        times = sorted(rng.randrange(minutes.start * 60_000, minutes.stop * 60_000)
                       for _ in range(rng.randint(5, 25)))
        events = [Event(T0 + t, rng.choice((0, 0, 1, 2, 3)), rng.randint(90, 255),
                        rng.randint(5, 1500)) for t in times]
        accepted.append(Accepted(d.id, version[d.id], EventBatch.of(seq0, 0, events)))
    store_batches(accepted, NOW)


def _history(fleet: dict[str, Any]) -> None:
    """Four ingest rounds over 4 hours; between them devices move and upgrade."""
    rng = random.Random(11)
    devices, (g0, g1), (p0, p1) = fleet["devices"], fleet["groups"], fleet["profiles"]
    version = {d.id: 1 for d in devices}
    _ingest(devices, rng, range(70), 1, version)
    devices[1].group = g0  # g1 -> g0 mid-range
    devices[1].save()
    for d in devices[::2]:
        version[d.id] = 2  # upgraded mid-range
    _ingest(devices, rng, range(65, 140), 2, version)
    devices[3].hardware_profile = p0 if devices[3].hardware_profile_id == p1.id else p1
    devices[3].save()
    devices[6].group = None
    devices[6].save()
    _ingest(devices, rng, range(130, 200), 3, version)
    fleet["deleted_id"] = devices[2].id
    devices[2].delete()  # its events and rollups stay, in no group any more
    Device.objects.filter(id=devices[4].id).update(group=g1)  # a bulk move
    _ingest([d for d in devices if d.id is not None], rng, range(190, 245), 4, version)


def _expected(flt: queries.TelemetryFilter, bucket_s: int) -> dict[str, Any]:
    """Series, labels, totals and devices from raw events and current membership."""
    ids = set(flt.devices().values_list("id", flat=True)) if flt.narrowed else None
    points: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    labels: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    devices: set[int] = set()
    for e in EventRow.objects.all():
        minute = e.ts.replace(second=0, microsecond=0)
        if not flt.since <= minute < flt.until or (ids is not None and e.device_id not in ids):
            continue
        if flt.model_version_ids and e.model_version_id not in flt.model_version_ids:
            continue
        acc = points[int(minute.timestamp()) // bucket_s * bucket_s]
        acc[0] += 1
        acc[1] += e.score
        acc[2] += e.latency_100us
        labels[e.label][0] += 1
        labels[e.label][1] += e.score
        devices.add(e.device_id)
    total = sum(n for n, _ in labels.values()) or 1
    return {
        "series": [(datetime.fromtimestamp(t, tz=UTC).isoformat(), n, s / n, lat / n / 10)
                   for t, (n, s, lat) in sorted(points.items())],
        "labels": [(lab, n, n / total, s / n) for lab, (n, s) in sorted(labels.items())],
        "events": sum(n for n, _ in labels.values()),
        "devices": len(devices),
    }


def _answered(flt: queries.TelemetryFilter, bucket_s: int) -> dict[str, Any]:
    summary = queries.summary(flt)
    return {
        "series": [(p["t"], p["events"], p["mean_score"], p["mean_latency_ms"])
                   for p in queries.series(flt, bucket_s)],
        "labels": [(r["label"], r["count"], r["share"], r["mean_score"])
                   for r in queries.label_distribution(flt)],
        "events": summary["events"],
        "devices": summary["devices"],
    }


SELECTIONS = [{}, {"group": "site-0"}, {"group": "site-1"}, {"hardware_profile": "P0"},
              {"hardware_profile": "P1"}, {"tag": "batch-1"}, {"device_uid": "seg-01"},
              {"group": "site-0", "hardware_profile": "P0"}, {"group": "nowhere"}]


@pytest.mark.parametrize("bucket_s", [60, 900, 3600])
def test_every_filter_answers_as_the_raw_events(fleet: dict[str, Any], bucket_s: int) -> None:
    _history(fleet)
    names = {"P0": fleet["profiles"][0].name, "P1": fleet["profiles"][1].name}
    # Ragged ends (minute 7 and 3 h 52 min) and whole 15 minutes; before and after a move.
    for lo, hi in ((7, 232), (0, 245), (60, 150), (130, 140), (-30, 300)):
        for selection in SELECTIONS:
            for versions in ([], [2], [1, 2]):
                sel = {k: names.get(v, v) for k, v in selection.items()}
                flt = queries.TelemetryFilter(since=START + timedelta(minutes=lo),
                                              until=START + timedelta(minutes=hi),
                                              model_version_ids=versions, **sel)
                got, want = _answered(flt, bucket_s), _expected(flt, bucket_s)
                assert got == want, (lo, hi, sel, versions)
                if not versions:
                    compared = queries.compare_versions(flt, 1, 2)
                    for side, mv in (("a", 1), ("b", 2)):
                        one = _expected(queries.TelemetryFilter(**{**flt.__dict__,
                                                                   "model_version_ids": [mv]}),
                                        bucket_s)
                        assert (compared[side]["events"], compared[side]["devices"]) == (
                            one["events"], one["devices"]), (lo, hi, sel, mv)
    assert EventRow.objects.count() > 500  # the history is not trivial


def test_group_and_profile_queries_read_segments_on_postgresql(fleet: dict[str, Any]) -> None:
    _history(fleet)
    flt = queries.TelemetryFilter(since=START + timedelta(minutes=7),
                                  until=START + timedelta(minutes=232), group="site-0")
    models = [qs.model for qs in flt.cell_sets(900)]
    if connection.vendor == "postgresql":
        assert models == [SegmentRollup, Rollup, Rollup]  # whole quarters, then both ends
        assert [qs.model for qs in flt.cell_sets(300)] == [Rollup]  # finer than a segment
        aligned = queries.TelemetryFilter(since=START, until=START + timedelta(hours=3),
                                          hardware_profile=fleet["profiles"][0].name)
        assert [qs.model for qs in aligned.cell_sets(3600)] == [SegmentRollup]
        fleet_wide = queries.TelemetryFilter(since=flt.since, until=flt.until)
        assert [qs.model for qs in fleet_wide.cell_sets(3600)] == [
            SegmentRollup, FleetRollup, FleetRollup]
    else:
        assert models == [Rollup]  # SQLite maintains no segments


def _segments_from_rollups() -> dict[tuple, tuple]:
    """Per-device rollups summed into (kind, segment, 15 minutes, version, label): the whole
    fleet, and the devices' current group and profile."""
    members = {d.id: ((1, d.group_id), (2, d.hardware_profile_id)) for d in Device.objects.all()}
    out: dict[tuple, list[int]] = {}
    for r in Rollup.objects.all():
        quarter = r.bucket.replace(minute=r.bucket.minute // 15 * 15)
        for kind, seg in ((0, 0), *members.get(r.device_id, ())):  # the fleet: every rollup
            if seg is None:
                continue
            acc = out.setdefault((kind, seg, quarter, r.model_version_id, r.label), [0] * 8)
            for i, f in enumerate(SUMS):
                acc[i] += getattr(r, f)
    return {k: tuple(v) for k, v in out.items()}


def _segments() -> dict[tuple, tuple]:
    rows = SegmentRollup.objects.values("kind", "segment_id", "bucket", "model_version_id",
                                        "label").annotate(**{f: Sum(f) for f in SUMS})
    return {(r["kind"], r["segment_id"], r["bucket"], r["model_version_id"], r["label"]):
            tuple(r[f] for f in SUMS) for r in rows if r["count"]}


def _spans() -> dict[tuple, tuple]:
    return {(s.device_id, s.model_version_id): (s.first_bucket, s.last_bucket)
            for s in ReportingSpan.objects.all()}


def _spans_from_rollups() -> dict[tuple, tuple]:
    rows = Rollup.objects.values("device_id", "model_version_id").annotate(
        lo=Min("bucket"), hi=Max("bucket"))
    return {(r["device_id"], r["model_version_id"]): (r["lo"], r["hi"]) for r in rows}


def test_triggers_keep_segments_and_spans_equal_to_the_rollups(fleet: dict[str, Any]) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the segment rollups are maintained by PostgreSQL triggers")
    _history(fleet)  # ingest upserts, moves, a profile change, a delete, a bulk move
    assert _segments() == _segments_from_rollups() != {}
    assert _spans() == _spans_from_rollups() != {}
    devices, (g0, g1) = fleet["devices"], fleet["groups"]
    Rollup.objects.filter(device_id=devices[5].id, model_version_id=2).update(
        model_version_id=7, count=1)  # a key-changing update: spans recomputed
    first = Rollup.objects.filter(device_id=devices[7].id).order_by("bucket").first()
    Rollup.objects.filter(device_id=devices[7].id, bucket=first.bucket).delete()  # span shrinks
    Rollup.objects.filter(device_id=devices[9].id, model_version_id=2).delete()  # span goes
    Rollup.objects.filter(label=3).delete()
    assert _segments() == _segments_from_rollups()
    assert _spans() == _spans_from_rollups()
    assert (devices[9].id, 2) not in _spans()
    g0.delete()  # its devices' group becomes NULL: their rollups leave it
    assert _segments() == _segments_from_rollups()
    assert not SegmentRollup.objects.filter(kind=1, segment_id=g0.id, count__gt=0).exists()
    # A device created under an id that already has rollups brings them into its segments.
    orphan = fleet["deleted_id"]
    assert Rollup.objects.filter(device_id=orphan).exists()
    Device.objects.create(id=orphan, uid="seg-back", hardware_profile=fleet["profiles"][1],
                          group=g1, public_key_pem="-", public_key_fingerprint="seg-back",
                          key_algorithm="ed25519")
    assert _segments() == _segments_from_rollups()
    Rollup.objects.all().delete()
    assert _segments() == {} and _spans() == {}


@pytest.mark.django_db(transaction=True)
def test_a_span_recomputed_by_a_delete_keeps_a_concurrent_writers_minute() -> None:
    """A writer widens a span (uncommitted) while another transaction deletes one of the pair's
    rollups: the delete's recompute waits and sees the new minute, not an older snapshot.

    No device row: for a known device the segment triggers' device lock already orders the
    two; here only the span lock does."""
    if connection.vendor != "postgresql":
        pytest.skip("the reporting spans are maintained by PostgreSQL triggers")
    import threading
    from types import SimpleNamespace

    import psycopg

    device = SimpleNamespace(id=987_654)
    Rollup.objects.bulk_create([Rollup(device_id=device.id, model_version_id=1, label=0,
                                       bucket=START + timedelta(minutes=m), count=1)
                                for m in (0, 10)])
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    ingest, deleter = psycopg.connect(**params), psycopg.connect(**params)
    try:
        ingest.execute("INSERT INTO telemetry_rollup (device_id, model_version_id, bucket, label,"
                       " count, score_sum, latency_sum, lat_le_1ms, lat_le_5ms, lat_le_20ms,"
                       " lat_le_100ms, lat_gt_100ms) VALUES (%s, 1, %s, 0, 1, 0, 0, 0, 0, 0, 0,"
                       " 0)", [device.id, START + timedelta(minutes=20)])  # widened, not committed

        def delete() -> None:
            deleter.execute("DELETE FROM telemetry_rollup WHERE device_id = %s AND bucket = %s",
                            [device.id, START])
            deleter.commit()

        worker = threading.Thread(target=delete)
        worker.start()
        worker.join(0.5)
        assert worker.is_alive()  # waits for the writer's lock on the span
        ingest.commit()
        worker.join(10)
        assert not worker.is_alive()
    finally:
        ingest.close()
        deleter.close()
    assert _spans() == _spans_from_rollups() == {
        (device.id, 1): (START + timedelta(minutes=10), START + timedelta(minutes=20))}
