"""Soak telemetry ingest into the day-partitioned raw event table on PostgreSQL.

Devices publish event batches on a fixed schedule (``--rate`` events/s offered, batches of 32,
QoS 1 with at most 50 in flight per device, up to ``--burst`` written back to back, raw MQTT 5
sockets shared with ``bench/ingest.py``:
``bench/mqtt_raw.py``) for ``--seconds``, through Mosquitto and the real worker
(``manage.py fleet_worker``; ``--workers N`` of them share the subscriptions) into PostgreSQL
(fsync on). The publishers are flow-controlled end
to end (``bench/soak_publisher.py``): at most ``--backlog-s`` seconds of the offered rate are
published and not yet committed, because Mosquitto never pushes back on a QoS 1 publisher and
drops what overflows a lagging worker's queue after acknowledging it. A rate the pipeline does
not sustain shows as the publishers' deficit and held time, not as loss; loss must be 0.
Meanwhile:

- a query process runs the telemetry queries the API serves (series, labels, summary, version
  comparison over the last hour of rollups) in a loop, 0.2 s apart (faster than any console
  refreshes), plus an operator's ad-hoc raw-event count over the last minute at most every
  ``RAW_COUNT_EVERY_S`` (it counts ~9M rows of the hot partition with parallel workers: run
  with the loop, it took ~0.75 of a core at 150k events/s, more than the ingest's own
  PostgreSQL work), and reports their latencies;
- half-way, ``manage.py prune_telemetry --days 30`` drops three old day partitions (filled
  before the run with rows of device -1), while COPY goes on into today's partition.

Each batch's ``t0`` is its publish time (wall clock, ms), so the publish-to-commit latency of
every batch is the time a poller (``telemetry_ingestedbatch`` by id every 10 ms) first sees it
committed minus its ``t0``: an upper bound by the poll period.

Figures (JSON lines): ``soak_events_per_s`` (committed events over the time from the first
publish to the last commit; baseline: the offered rate), ``soak_min_10s_events_per_s`` (the
slowest 10-second window), ``soak_latency_p50_ms`` / ``p99``, ``soak_lost_events``,
``soak_duplicated_events``, ``soak_partition_drop_seconds``, ``soak_query_p95_ms``; each with
the load average, the duration and the publishers' deficit; ``soak_events_per_s`` carries the
CPU seconds of each process over the run (worker, broker, this run's PostgreSQL cluster, the
publishers, the query process; the cluster's also by role: ``bench/soak_cpu.py``) and per event
(µs): whether the rate fits on idle cores.

Run: ``.venv/bin/python bench/soak.py [--quick]`` (quick: 40 s in all, 30k events/s offered
for 15 s). The full run: 3 minutes at 150k events/s offered.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, whatever the venv's editable install
os.environ["PYTHONPATH"] = os.pathsep.join(  # and in every subprocess (bench/ingest.py roles)
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

from ingest import (
    Database,
    broker_admin_settings,
    cluster_cpu_seconds,
    django_env,
    start_postgres,
    stop_postgres,
)
from lab import cpu_seconds, print_figures, remove_workdir
from soak_cpu import PgCpuSampler
from soak_publisher import BURST, PER_BATCH, run_publisher

READY_LINE = "subscriptions granted"
OLD_DAYS = (45, 44, 43)  # days ago of the partitions dropped during the run
RAW_COUNT_EVERY_S = 10.0  # the raw last-minute count: an ad-hoc check, not a dashboard


def log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the query side -------------------------------------------------------------------------


def run_queries() -> None:
    """Run the telemetry queries in a loop until stdin closes; print their latencies (ms)."""
    import django

    django.setup()
    from django.db import connection

    from fleet.telemetry import queries

    def raw_last_minute() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM telemetry_event WHERE ts > now() - interval"
                           " '1 minute'")
            cursor.fetchone()

    timings: dict[str, list[float]] = {}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with connection.cursor() as cursor:  # its server process, for the CPU figures
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    print(f"ready {backend}", flush=True)
    cpu0 = time.process_time()
    raw_due = time.monotonic()
    while not stop.is_set():
        since, until = queries.default_range(1)
        flt = queries.TelemetryFilter(since=since, until=until)
        calls = [("series", lambda flt=flt: queries.series(flt)),
                 ("labels", lambda flt=flt: queries.label_distribution(flt)),
                 ("summary", lambda flt=flt: queries.summary(flt)),
                 ("compare", lambda flt=flt: queries.compare_versions(flt, 0, 1))]
        if time.monotonic() >= raw_due:
            raw_due = time.monotonic() + RAW_COUNT_EVERY_S
            calls.append(("raw_last_minute", raw_last_minute))
        for name, call in calls:
            t = time.perf_counter()
            call()
            timings.setdefault(name, []).append((time.perf_counter() - t) * 1000)
        stop.wait(0.2)
    timings["cpu_s"] = time.process_time() - cpu0  # type: ignore[assignment]
    print(json.dumps(timings), flush=True)


# -- the run --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Poller(threading.Thread):
    """Watch telemetry_ingestedbatch for committed batches: latency from t0 and a timeline."""

    def __init__(self, db: Database) -> None:
        super().__init__(daemon=True)
        self.db, self.stop, self.last_id = db, threading.Event(), 0
        self.latencies_ms: list[float] = []
        self.timeline: list[tuple[float, int]] = []  # (monotonic, batches so far)
        self.batches = 0

    backend = 0  # its connection's server process

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:  # a dead poller would freeze the figures: reconnect and go on
                if conn is None:
                    conn = self.db.connect()
                    self.backend = conn.info.backend_pid
                rows = conn.execute(
                    "SELECT id, (extract(epoch FROM t0) * 1000)::bigint FROM"
                    " telemetry_ingestedbatch WHERE id > %s ORDER BY id",
                    [self.last_id]).fetchall()
            except Exception as exc:  # noqa: BLE001
                log(f"poller: {exc!r}; reconnecting")
                conn = None
                time.sleep(0.5)
                continue
            seen_ms = time.time() * 1000
            if rows:
                self.last_id = rows[-1][0]
                self.batches += len(rows)
                self.latencies_ms += [seen_ms - t0 for _, t0 in rows]
                self.timeline.append((time.monotonic(), self.batches))
            time.sleep(0.01)
        if conn is not None:
            conn.close()


def feed_allowance(publishers: list[subprocess.Popen[Any]], poller: Poller, warm: int,
                   backlog: int, stop: threading.Event) -> None:
    """Every 20 ms, tell each publisher how many batches it may have published in all: its
    share of those committed so far plus of the backlog allowance (soak_publisher.py)."""
    while not stop.wait(0.02):
        allow = ((poller.batches - warm) + backlog) // len(publishers)
        for p in publishers:
            try:
                assert p.stdin is not None
                p.stdin.write(f"allow {allow}\n")
                p.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass  # that publisher has finished


def fill_old_days(db: Database, rows_per_day: int) -> list[str]:
    """Make the old day partitions and fill them (device -1); return their names."""
    from datetime import UTC, datetime, timedelta

    conn = db.connect()
    names = []
    try:
        for ago in OLD_DAYS:
            day = (datetime.now(UTC) - timedelta(days=ago)).date()
            name = f"telemetry_event_p{day:%Y%m%d}"
            lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
            conn.execute(f"CREATE TABLE {name} (LIKE telemetry_event INCLUDING DEFAULTS)")
            conn.execute(f"ALTER TABLE telemetry_event ATTACH PARTITION {name} FOR VALUES"
                         f" FROM ('{lo.isoformat()}') TO ('{(lo + timedelta(days=1)).isoformat()}')")
            conn.execute(
                "INSERT INTO telemetry_event (device_id, model_version_id, seq, ts, label, score,"
                " latency_100us) SELECT -1, 0, i / 32, %s + (i * 86400.0 / %s) * interval"
                " '1 second', i %% 8, i %% 256, i %% 400 FROM generate_series(0, %s - 1) i",
                [lo, rows_per_day, rows_per_day])
            names.append(name)
    finally:
        conn.close()
    return names


def main() -> None:
    # SIGTERM (timeout, Ctrl-C in a wrapper) unwinds through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=int, help="offered events/s (default 150k; quick 30k)")
    parser.add_argument("--seconds", type=float, help="publishing time (default 180; quick 15)")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the subscriptions")
    parser.add_argument("--burst", type=int, default=BURST,
                        help="messages a device sends back to back when that many are due")
    parser.add_argument("--backlog-s", type=float, default=2.0,
                        help="seconds of the offered rate that may be published, not committed")
    parser.add_argument("--broker-queue", type=int,
                        help="the broker's max_queued_messages (default: the deploy template's);"
                        " small, with a large --backlog-s, it shows the loss flow control avoids")
    parser.add_argument("--old-rows", type=int, help="rows per old day (default 1M; quick 50k)")
    parser.add_argument("--role", choices=["publisher", "queries"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "publisher":
        return run_publisher(args.spec)
    if args.role == "queries":
        return run_queries()
    args.rate = args.rate or (30_000 if args.quick else 150_000)
    args.seconds = args.seconds or (15.0 if args.quick else 180.0)
    args.old_rows = args.old_rows or (50_000 if args.quick else 1_000_000)
    if args.quick:
        args.devices = min(args.devices, 40)

    from fleet.broker.access import ServiceRole
    from fleet.broker.dynsec import DynsecAccess
    from fleet.broker.mosquitto import MosquittoInstance
    from testkit.broker import free_port
    from testkit.worker import end_session

    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-soak-"))
    os.chmod(workdir, 0o755)
    queue = {} if args.broker_queue is None else {"max_queued_messages": args.broker_queue}
    broker = MosquittoInstance(workdir / "broker", free_port(), free_port(),
                               secrets.token_urlsafe(16), **queue)
    pg = None
    procs: list[subprocess.Popen[Any]] = []
    results: list[dict[str, Any]] = []
    load_before = load_average()
    try:
        broker.start()
        pg = start_postgres(workdir)
        db = Database("postgresql", pg[0])
        if db.migrate().wait() != 0:
            raise RuntimeError("migrate failed")
        old = fill_old_days(db, args.old_rows)
        log(f"old partitions {', '.join(old)}: {args.old_rows:,} rows each")
        identity = ("soak-worker", secrets.token_urlsafe(16))
        passwords = {uid: secrets.token_urlsafe(12) for uid in db.devices(args.devices)}
        broker_admin_settings()
        with DynsecAccess(broker.host, broker.port, broker.admin_username,
                          broker.admin_password) as access:
            access.provision_service(*identity, ServiceRole.WORKER)
            for uid, password in passwords.items():
                access.provision_device(uid, password)
        env = django_env(db.url, MQTT_URL=broker.url, MQTT_WORKER_USERNAME=identity[0],
                         MQTT_WORKER_PASSWORD=identity[1], MQTT_WORKER_GROUP="soak",
                         FLEET_VAR_DIR=str(workdir / "var"), FLEET_LOG_LEVEL="INFO",
                         PYTHONPATH=str(ROOT))
        # Several workers share the subscriptions ($share/soak/...), each under its own name.
        names = [f"soak-{i}" for i in range(args.workers)]
        workers = []
        for name in names:
            with (workdir / f"{name}.log").open("ab") as worker_out:
                workers.append(subprocess.Popen(
                    [sys.executable, "manage.py", "fleet_worker", "--name", name, "--no-jobs",
                     "--no-rollouts"], cwd=ROOT, env=env, stdout=worker_out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        procs += workers
        deadline = time.monotonic() + 60
        for name, worker in zip(names, workers, strict=True):
            worker_log = workdir / f"{name}.log"
            while READY_LINE not in worker_log.read_text(errors="replace"):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(worker_log.read_text()[-2000:])
                time.sleep(0.05)
        uids = sorted(passwords)
        publishers = []
        for i in range(args.publishers):
            spec = workdir / f"publisher-{i}.json"
            spec.write_text(json.dumps({
                "host": broker.host, "port": broker.port, "seconds": args.seconds,
                "messages_per_s": args.rate / PER_BATCH / args.publishers, "burst": args.burst,
                "devices": [(u, passwords[u]) for u in uids[i::args.publishers]]}))
            publishers.append(subprocess.Popen(
                [sys.executable, __file__, "--role", "publisher", "--spec", str(spec)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True))
        procs += publishers
        for p in publishers:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        query = subprocess.Popen([sys.executable, __file__, "--role", "queries"], cwd=ROOT,
                                 env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        procs.append(query)
        assert query.stdout is not None
        ready, query_backend = query.stdout.readline().split()
        assert ready == "ready"
        poller = Poller(db)
        poller.batches = db.scalar("SELECT count(*) FROM telemetry_ingestedbatch")
        poller.last_id = db.scalar("SELECT max(id) FROM telemetry_ingestedbatch")
        warm = poller.batches
        poller.start()
        sampler = PgCpuSampler(pg[1])
        sampler.start()
        cpu0 = {"worker": sum(cpu_seconds(w.pid) for w in workers), "broker": cpu_seconds(broker.pid),
                "postgres": cluster_cpu_seconds(pg[1])}
        started = time.monotonic()
        for p in publishers:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        feeding = threading.Event()
        backlog = int(args.backlog_s * args.rate / PER_BATCH)
        if backlog >= (args.broker_queue or broker.max_queued_messages):
            log(f"the backlog allowance ({backlog:,} batches) reaches the broker's queue limit:"
                " a lagging worker's queue can overflow, and Mosquitto then drops")
        feeder = threading.Thread(target=feed_allowance, daemon=True,
                                  args=(publishers, poller, warm, backlog, feeding))
        feeder.start()
        time.sleep(args.seconds / 2)
        log(f"half-way ({poller.batches - warm} batches so far): prune_telemetry --days 30")
        t = time.monotonic()
        prune = subprocess.run([sys.executable, "manage.py", "prune_telemetry", "--days", "30"],
                               cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        command_s = time.monotonic() - t
        import re

        found = re.search(r"dropped .* in ([0-9.]+) s", prune.stdout)
        drop_s = float(found.group(1)) if found else command_s  # the drops alone
        log(f"prune_telemetry took {command_s:.2f} s (its drops {drop_s:.2f} s): "
            f"{prune.stdout.strip()} {prune.stderr.strip()[-300:]}")
        left = [n for n in old if db.scalar(f"SELECT count(*) FROM pg_class WHERE relname ="
                                            f" '{n}'")]
        published = [json.loads(p.stdout.readline()) for p in publishers]  # type: ignore[union-attr]
        feeding.set()
        feeder.join()
        for p in publishers:
            p.communicate(timeout=60)
        messages = sum(p["messages"] for p in published)
        deficit = sum(p["deficit"] for p in published) * PER_BATCH
        held = max(p["held_s"] for p in published)
        want = warm + messages
        # Until every batch is in, or nothing new was committed for 20 s (what is missing then
        # was lost: the broker dropped it), or 10 minutes.
        deadline, seen, idle_since = time.monotonic() + 600, -1, time.monotonic()
        while poller.batches < want and time.monotonic() < deadline:
            stored = db.scalar("SELECT count(*) FROM telemetry_ingestedbatch")
            if stored >= want:
                time.sleep(0.2)  # let the poller see the last ones
                break
            if stored != seen:
                seen, idle_since = stored, time.monotonic()
            elif time.monotonic() - idle_since > 20:
                break
            time.sleep(0.5)
        log(f"stored {db.scalar('SELECT count(*) FROM telemetry_ingestedbatch') - warm} of "
            f"{messages} timed batches; the poller saw {poller.batches - warm}")
        elapsed = (poller.timeline[-1][0] if poller.timeline else time.monotonic()) - started
        poller.stop.set()
        poller.join()
        cpu = {"worker": sum(cpu_seconds(w.pid) for w in workers) - cpu0["worker"],
               "broker": cpu_seconds(broker.pid) - cpu0["broker"],
               "postgres": cluster_cpu_seconds(pg[1]) - cpu0["postgres"],
               "publishers": sum(p["cpu_s"] for p in published)}
        sampler.stop.set()
        sampler.join()
        roles = sampler.by_role(int(query_backend), poller.backend)
        cpu |= {f"postgres_{role}": v for role, v in roles.items()}
        cpu["postgres_unattributed"] = cpu["postgres"] - sum(roles.values())
        timings = json.loads(query.communicate(input="", timeout=120)[0].strip().splitlines()[-1])
        cpu["queries"] = timings.pop("cpu_s")
        load_after = load_average()
        time.sleep(0.5)
        for name, worker in zip(names, workers, strict=True):
            worker.terminate()
            worker.wait(timeout=60)
            end_session(broker, name, *identity)
        check = db.connect()  # one pass over every stored row, hashed in memory
        check.execute("SET work_mem = '512MB'")
        rows, batches = check.execute(
            "SELECT coalesce(sum(n), 0), count(*) FROM (SELECT count(*) AS n FROM"
            " telemetry_event WHERE device_id > 0 GROUP BY device_id, seq) b").fetchone()
        rows, unique = int(rows), PER_BATCH * int(batches)
        rolled = int(check.execute("SELECT coalesce(sum(count), 0) FROM telemetry_rollup"
                                   " WHERE device_id > 0").fetchone()[0])
        check.close()
        expected = want * PER_BATCH
        timed = messages * PER_BATCH
        lost = expected - unique
        duplicated = rows - unique + max(rolled - rows, 0)
        # Rate per 10 s window of the timeline (batches committed).
        windows = []
        tl = [(ts - started, n - warm) for ts, n in poller.timeline]
        for w0 in range(0, int(args.seconds) - 9, 5):
            inside = [n for ts, n in tl if w0 <= ts <= w0 + 10]
            if len(inside) > 1:
                windows.append((inside[-1] - inside[0]) * PER_BATCH / 10)
        lat = poller.latencies_ms
        # What was stored, not what was offered: a broker whose queue for the worker is full
        # drops messages it already acknowledged (counted as lost below).
        stored_timed = unique - warm * PER_BATCH
        rate = stored_timed / elapsed
        per_event = {k: v / max(stored_timed, 1) * 1e6 for k, v in cpu.items() if v}
        log(f"{messages} messages ({timed:,} events, {stored_timed:,} stored) offered at "
            f"{args.rate:,}/s for "
            f"{args.seconds:.0f} s; committed in {elapsed:.1f} s; publishers short of the "
            f"schedule by {deficit:,} events, held back by the pipeline for up to "
            f"{held:.1f} s (backlog allowance {backlog:,} batches); refused "
            f"{sum(p['refused'] for p in published)}; old partitions left {left}")
        log("CPU per event (us): " + ", ".join(f"{k} {v:.2f}" for k, v in per_event.items()))
        log("query ms p50/p95: " + ", ".join(
            f"{k} {percentile(v, 0.5):.1f}/{percentile(v, 0.95):.1f} (n={len(v)})"
            for k, v in timings.items()))
        extra = {"load_avg_before": load_before, "load_avg_after": load_after,
                 "seconds": round(elapsed, 1), "offered_events_per_s": args.rate,
                 "workers": args.workers, "publishers": args.publishers,
                 "publisher_deficit_events": deficit, "publisher_held_s": held,
                 "backlog_s": args.backlog_s}
        results += [
            {"metric": "soak_events_per_s", "value": round(rate), "unit": "events/s",
             "baseline": args.rate, "ratio": round(rate / args.rate, 3),
             "cpu_us_per_event": {k: round(v, 2) for k, v in per_event.items()},
             "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()}, **extra},
            {"metric": "soak_min_10s_events_per_s", "value": round(min(windows or [0])),
             "unit": "events/s", "baseline": args.rate,
             "ratio": round(min(windows or [0]) / args.rate, 3), **extra},
            {"metric": "soak_latency_p50_ms", "value": round(percentile(lat, 0.5), 1),
             "unit": "ms", "baseline": None, "ratio": None, "batches": len(lat), **extra},
            {"metric": "soak_latency_p99_ms", "value": round(percentile(lat, 0.99), 1),
             "unit": "ms", "baseline": None, "ratio": None, **extra},
            {"metric": "soak_lost_events", "value": lost, "unit": "events", "baseline": 0,
             "ratio": None},
            {"metric": "soak_duplicated_events", "value": duplicated, "unit": "events",
             "baseline": 0, "ratio": None},
            {"metric": "soak_partition_drop_seconds", "value": round(drop_s, 2), "unit": "s",
             "baseline": None, "ratio": None, "command_seconds": round(command_s, 2),
             "dropped": len(old) - len(left),
             "rows_dropped": len(old) * args.old_rows, **extra},
            {"metric": "soak_query_p95_ms", "value": round(max(
                percentile(v, 0.95) for v in timings.values()), 1), "unit": "ms",
             "baseline": None, "ratio": None,
             "per_query": {k: round(percentile(v, 0.95), 1) for k, v in timings.items()},
             **extra},
        ]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        broker.stop()
        stop_postgres(pg)
        remove_workdir(workdir)
    print_figures(results)


if __name__ == "__main__":
    main()
