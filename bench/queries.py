"""Telemetry and device-list queries at fleet scale on PostgreSQL, through the REST API.

Builds, in a throwaway PostgreSQL: ``--devices`` devices (100,000: profiles, 20 groups, 50 tags,
states, last_seen over 30 days, 1 % revoked); ``--events`` raw events (10 million) over 30
days from the first ``--telemetry-devices`` devices (10,000), binary COPY into the day
partitions, model version 1 everywhere and version 2 on half the devices over the last 10
days; the per-minute rollups the worker would have written, aggregated from those events by
SQL (one INSERT ... SELECT per day; the triggers of migrations 0008–0010 sum them into the
fleet-wide rollups, the 15-minute fleet, group and profile segments and the devices'
reporting spans as at ingest); then VACUUM ANALYZE (the state autovacuum keeps).

Then times each query through the API in process (Django test client, a logged-in viewer,
DEBUG off): the telemetry series, labels and version comparison for the whole fleet (24 h),
a group (7 days), a hardware profile (24 h) and one device (30 days); the device list with
filters (profile, group, tag, state, revoked, last seen, ordering, search). Every query runs
``--repeat`` times after a warm-up; figures are p50/p95 in ms, with the load average, and the
mean CPU per request of the bench process and of its PostgreSQL backend (on a loaded box the
wall clock waits for cores; CPU does not).

Run: ``.venv/bin/python bench/queries.py [--quick] [--devices-only]`` (quick: 1M events from
1,000 devices, 20,000 devices; devices-only: no events, only the device list is timed and
only its figure printed).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
from ingest import start_postgres, stop_postgres
from lab import print_figures, remove_workdir

DAYS = 30


def log(msg: str) -> None:
    print(f"[queries] {msg}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_devices(count: int, now: datetime) -> list[int]:
    """Create ``count`` devices with groups, tags, states; return their ids in order."""
    from django.db import connection

    from fleet.devices.models import Device, DeviceGroup, HardwareProfile, Tag

    rng = np.random.default_rng(1)
    profiles = list(HardwareProfile.objects.order_by("name"))
    groups = DeviceGroup.objects.bulk_create([DeviceGroup(name=f"site-{i:02d}") for i in range(20)])
    tags = Tag.objects.bulk_create([Tag(name=f"batch-{i:02d}") for i in range(50)])
    states = ["online"] * 6 + ["offline"] * 3 + ["enrolled"]
    tag_rows = []
    for start in range(0, count, 10_000):
        batch = []
        for i in range(start, min(count, start + 10_000)):
            revoked = i % 100 == 99
            batch.append(Device(
                uid=f"dev-{i:06d}", name=f"sensor {i}", hardware_profile=profiles[i % len(profiles)],
                group=groups[int(rng.integers(0, 20))], public_key_pem="-",
                public_key_fingerprint=f"{i:064x}", key_algorithm="ed25519",
                state="revoked" if revoked else states[i % len(states)],
                revoked_at=now if revoked else None,
                last_seen=now - timedelta(seconds=float(rng.uniform(0, DAYS * 86400))),
                firmware_version=f"1.{i % 4}.0"))
        Device.objects.bulk_create(batch)
    ids = list(Device.objects.order_by("id").values_list("id", flat=True))
    for n, device_id in enumerate(ids):
        for t in {n % 50, (n * 7 + 3) % 50} if n % 3 else {n % 50}:
            tag_rows.append((device_id, tags[t].id))
    with connection.cursor() as cursor, cursor.copy(
            "COPY devices_device_tags (device_id, tag_id) FROM STDIN") as copy:
        for row in tag_rows:
            copy.write_row(row)
    return ids


def make_events(device_ids: list[int], events: int, now: datetime) -> None:
    """COPY ``events`` events over DAYS days into the day partitions, then the rollups."""
    from django.db import connection, transaction

    from fleet.telemetry import partitions
    from fleet.telemetry.ingest import _binary_copy

    pg_epoch_us = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
    rng = np.random.default_rng(2)
    devices = np.array(device_ids, dtype=np.int64)
    # Windows on minute boundaries: a minute's rollup cell comes from one window only.
    start = (now - timedelta(days=DAYS)).replace(second=0, microsecond=0)
    per_day = events // DAYS
    weights = np.array([30, 20, 15, 10, 10, 8, 5, 2], dtype=float)
    weights /= weights.sum()
    v2_from = (now - timedelta(days=10)).timestamp()
    for d in range(DAYS + 1):
        partitions.create_day((start + timedelta(days=d)).date())
    for d in range(DAYS):
        t0 = start.timestamp() + d * 86400
        ts = np.sort(rng.uniform(t0, t0 + 86400, per_day))
        dev = devices[rng.integers(0, len(devices), per_day)]
        mv = np.where((ts >= v2_from) & (dev % 2 == 0), 2, 1).astype(np.int32)
        label = rng.choice(8, per_day, p=weights).astype(np.int16)
        score = rng.integers(90, 256, per_day).astype(np.int16)
        latency = rng.integers(20, 2500, per_day).astype(np.int32)
        data = _binary_copy([
            (">i8", dev), (">i4", mv), (">i8", np.arange(per_day, dtype=np.int64) // 32),
            (">i8", (ts * 1e6).astype(np.int64) - pg_epoch_us), (">i2", label),
            (">i2", score), (">i4", latency)])
        with transaction.atomic(), connection.cursor() as cursor:
            with cursor.copy("COPY telemetry_event (device_id, model_version_id, seq, ts,"
                             " label, score, latency_100us) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(data)
            lo = datetime.fromtimestamp(t0, UTC)
            cursor.execute(
                "INSERT INTO telemetry_rollup (device_id, model_version_id, bucket, label, count,"
                " score_sum, latency_sum, lat_le_1ms, lat_le_5ms, lat_le_20ms, lat_le_100ms,"
                " lat_gt_100ms) SELECT device_id, model_version_id, date_trunc('minute', ts),"
                " label, count(*), sum(score), sum(latency_100us),"
                " count(*) FILTER (WHERE latency_100us <= 10),"
                " count(*) FILTER (WHERE latency_100us > 10 AND latency_100us <= 50),"
                " count(*) FILTER (WHERE latency_100us > 50 AND latency_100us <= 200),"
                " count(*) FILTER (WHERE latency_100us > 200 AND latency_100us <= 1000),"
                " count(*) FILTER (WHERE latency_100us > 1000)"
                " FROM telemetry_event WHERE ts >= %s AND ts < %s GROUP BY 1, 2, 3, 4"
                " ORDER BY 3",
                [lo, lo + timedelta(days=1)])
        if d % 5 == 4:
            log(f"  {d + 1} of {DAYS} days of events and rollups")


def backend_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the PostgreSQL backend ``pid`` so far (same host)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_queries(client: Any, queries: dict[str, str], repeat: int) -> dict[str, dict[str, float]]:
    """Time each URL ``repeat`` times: wall p50/p95, and the mean CPU per request of this
    process (API, ORM) and of its PostgreSQL backend, which the box's load does not inflate."""
    from django.db import connection

    out = {}
    for name, url in queries.items():
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code, response.content[:300])
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        times = []
        cpu0, db0 = time.process_time(), backend_cpu_s(backend)
        for _ in range(repeat):
            t = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200
        cpu = (time.process_time() - cpu0) / repeat * 1000
        db = (backend_cpu_s(backend) - db0) / repeat * 1000
        times.sort()
        out[name] = {"p50": round(times[len(times) // 2], 1),
                     "p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1),
                     "cpu_ms_app": round(cpu, 1), "cpu_ms_db": round(db, 1)}
        log(f"  {name}: p50 {out[name]['p50']} ms, p95 {out[name]['p95']} ms, CPU per request"
            f" {out[name]['cpu_ms_app']} ms app + {out[name]['cpu_ms_db']} ms db  {url}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--telemetry-devices", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--devices-only", action="store_true",
                        help="no events: time the device list only")
    args = parser.parse_args()
    args.devices = args.devices or (20_000 if args.quick else 100_000)
    args.telemetry_devices = args.telemetry_devices or (1_000 if args.quick else 10_000)
    args.events = args.events or (1_000_000 if args.quick else 10_000_000)
    args.repeat = args.repeat or (10 if args.quick else 30)

    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-queries-"))
    os.chmod(workdir, 0o755)
    pg = None
    results: list[dict[str, Any]] = []
    try:
        pg = start_postgres(workdir)
        os.environ.update({
            "DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_DEBUG": "0",
            "SECRET_KEY": "bench-" + secrets.token_hex(24), "DATABASE_URL": pg[0],
            "FLEET_VAR_DIR": str(workdir / "var"), "FLEET_KEK": "bench-" + secrets.token_hex(16),
            "MQTT_ADMIN_PASSWORD": "unused", "ALLOWED_HOSTS": "testserver",
            "SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0",
            "SECURE_HSTS_SECONDS": "0", "FLEET_LOG_LEVEL": "WARNING"})
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        call_command("migrate", verbosity=0)
        now = datetime.now(UTC)
        t = time.monotonic()
        ids = make_devices(args.devices, now)
        log(f"{args.devices:,} devices in {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        if args.devices_only:
            args.telemetry_devices = args.events = 0
        else:
            make_events(ids[:args.telemetry_devices], args.events, now)
        with connection.cursor() as cursor:
            # The state autovacuum keeps a live database in: BRIN ranges summarized, visibility
            # map set, statistics fresh (a bulk load leaves none of them).
            cursor.execute("VACUUM ANALYZE")
            cursor.execute("SELECT count(*) FROM telemetry_rollup")
            rollups = cursor.fetchone()[0]
            cursor.execute("SELECT count(*) FROM telemetry_fleetrollup")
            fleet_rollups = cursor.fetchone()[0]
        log(f"{args.events:,} events, {rollups:,} rollup rows ({fleet_rollups:,} fleet-wide) in "
            f"{time.monotonic() - t:.1f} s")

        from fleet.accounts.actions import do_create_user
        from fleet.core.roles import Role

        client = Client()
        client.force_login(do_create_user("bench-viewer", secrets.token_urlsafe(12),
                                          Role.VIEWER, actor=None))
        from fleet.devices.models import Device

        one = Device.objects.get(id=ids[7]).uid
        profile = Device.objects.get(id=ids[0]).hardware_profile.name
        since7 = (now - timedelta(days=7)).isoformat().replace("+00:00", "Z")
        since30 = (now - timedelta(days=DAYS)).isoformat().replace("+00:00", "Z")
        seen = (now - timedelta(days=1)).isoformat().replace("+00:00", "Z")
        telemetry = {
            "series_fleet_24h": "/api/v1/telemetry/series/?bucket=300",
            "series_group_7d": f"/api/v1/telemetry/series/?group=site-03&since={since7}&bucket=3600",
            "series_profile_24h": f"/api/v1/telemetry/series/?hardware_profile={profile}&bucket=900",
            "series_device_30d": f"/api/v1/telemetry/series/?device={one}&since={since30}&bucket=3600",
            "labels_fleet_24h": "/api/v1/telemetry/labels/",
            "labels_group_7d": f"/api/v1/telemetry/labels/?group=site-03&since={since7}",
            "labels_tag_24h": "/api/v1/telemetry/labels/?tag=batch-07",
            "compare_fleet_24h": "/api/v1/telemetry/compare/?a=1&b=2",
            "compare_group_7d": f"/api/v1/telemetry/compare/?a=1&b=2&group=site-03&since={since7}",
            "compare_device_30d": f"/api/v1/telemetry/compare/?a=1&b=2&device={one}&since={since30}",
        }
        devices = {
            "devices_first_page": "/api/v1/devices/",
            "devices_profile_online": f"/api/v1/devices/?hardware_profile={profile}&state=online",
            "devices_group_not_revoked": "/api/v1/devices/?group=site-03&revoked=false",
            "devices_tag": "/api/v1/devices/?tag=batch-07",
            "devices_seen_last_day_by_recency": f"/api/v1/devices/?last_seen_after={seen}&ordering=-last_seen",
            "devices_offline_page_20": "/api/v1/devices/?state=offline&offset=1000&limit=50",
            "devices_search_uid": "/api/v1/devices/?search=dev-04242",
        }
        load_before = load_average()
        tel = {}
        if not args.devices_only:
            log("telemetry queries:")
            tel = time_queries(client, telemetry, args.repeat)
        log("device list:")
        dev = time_queries(client, devices, args.repeat)
        load_after = load_average()
        common = {"fleet_devices": args.devices, "telemetry_devices": args.telemetry_devices,
                  "events": args.events, "rollup_rows": rollups,
                  "fleet_rollup_rows": fleet_rollups, "days": DAYS,
                  "load_avg_before": load_before, "load_avg_after": load_after}
        if tel:
            worst_tel = max(v["p95"] for v in tel.values())
            results.append(
                {"metric": "telemetry_query_p95_ms", "value": worst_tel, "unit": "ms",
                 "baseline": 200, "ratio": round(worst_tel / 200, 3), "worst_of": tel, **common})
        worst_dev = max(v["p95"] for v in dev.values())
        results += [
            {"metric": "device_list_p95_ms", "value": worst_dev, "unit": "ms", "baseline": 50,
             "ratio": round(worst_dev / 50, 3), "worst_of": dev, **common},
        ]
    finally:
        stop_postgres(pg)
        remove_workdir(workdir)
    print_figures(results)


if __name__ == "__main__":
    main()
