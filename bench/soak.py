"""Soak telemetry ingest into the day-partitioned raw event table on PostgreSQL.

Devices publish event batches at a steady offered rate (``--rate`` events/s, batches of 32,
QoS 1, raw MQTT 5 sockets as in ``bench/ingest.py``) for ``--seconds``, through Mosquitto and
the real worker (``manage.py fleet_worker``) into PostgreSQL (fsync on), while:

- a query process runs the telemetry queries the API serves (series, labels, summary, version
  comparison over the last hour of rollups) plus a raw-event count over the last minute, in a
  loop, and reports their latencies;
- half-way, ``manage.py prune_telemetry --days 30`` drops three old day partitions (filled
  before the run with rows of device -1), while COPY goes on into today's partition.

Each batch's ``t0`` is its publish time (wall clock, ms), so the publish-to-commit latency of
every batch is the time a poller (``telemetry_ingestedbatch`` by id every 10 ms) first sees it
committed minus its ``t0``: an upper bound by the poll period.

Figures (JSON lines): ``soak_events_per_s`` (committed events over the time from the first
publish to the last commit; baseline: the offered rate), ``soak_min_10s_events_per_s`` (the
slowest 10-second window), ``soak_latency_p50_ms`` / ``p99``, ``soak_lost_events``,
``soak_duplicated_events``, ``soak_partition_drop_seconds``, ``soak_query_p95_ms``; each with
the load average and the duration. Stderr carries CPU per event of each process.

Run: ``.venv/bin/python bench/soak.py [--quick]`` (quick: 40 s in all, 30k events/s offered
for 15 s). The full run: 3 minutes at 150k events/s offered.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
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

from ingest import Database, django_env, postgres_cpu_seconds, start_postgres  # noqa: E402
from lab import cpu_seconds  # noqa: E402

READY_LINE = "subscriptions granted"
PER_BATCH = 32
WINDOW = 50  # QoS 1 messages in flight per device
OLD_DAYS = (45, 44, 43)  # days ago of the partitions dropped during the run


def log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the device side ------------------------------------------------------------------------


def run_publisher(spec_path: str) -> None:
    """Connect the devices, send a warm-up batch each, say ready; on 'go' publish at the
    spec's rate for its seconds (at most WINDOW unacknowledged per device), then wait for
    every PUBACK and print ``{"messages", "refused", "behind"}``."""
    import selectors
    import socket

    import cbor2

    from ingest_publisher import _mqtt_packet, _mqtt_packets, _mqtt_str
    from device_sdk.protocol.events import Event, EventBatch, MessageKind, encode_batch

    spec = json.loads(Path(spec_path).read_text())
    # The columns of a few template batches; each message gets its own seq and t0 (= now).
    t = 1_767_225_600_000
    templates = []
    for k in range(8):
        events = [Event(t + i * 997, (i * 7 + k) % 8, 90 + (i * 37 + k) % 160,
                        20 + (i * 131 + k * 17) % 2400) for i in range(PER_BATCH)]
        items = cbor2.loads(encode_batch(EventBatch.of(1, 0, events)))
        assert items[0] == MessageKind.BATCH2 and len(items) == 6
        templates.append(items[4:])

    def payload(seq: int, t0: int) -> bytes:
        return cbor2.dumps([int(MessageKind.BATCH2), seq - t0, t0, 0,
                            *templates[seq % len(templates)]])

    selector = selectors.DefaultSelector()
    devices = []
    for uid, password in spec["devices"]:
        sock = socket.create_connection((spec["host"], spec["port"]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        variable = _mqtt_str("MQTT") + bytes([5, 0xC2]) + (60).to_bytes(2, "big") + b"\x00"
        sock.sendall(_mqtt_packet(0x10, variable + _mqtt_str(uid) + _mqtt_str(uid)
                                  + _mqtt_str(password)))
        buffer = bytearray()
        while not (packets := _mqtt_packets(buffer)):
            buffer += sock.recv(4096)
        (first, body), = packets
        if first != 0x20 or body[1] != 0:
            raise RuntimeError(f"broker refused {uid}: {first:#x} {body[1]:#x}")
        state = {"sock": sock, "topic": _mqtt_str(f"fleet/v1/{uid}/events"), "seq": 0,
                 "inflight": 0, "buffer": bytearray()}
        selector.register(sock, selectors.EVENT_READ, state)
        devices.append(state)
    counts = {"acked": 0, "refused": 0}

    def send(dev: dict[str, Any], out: dict[int, list[bytes]]) -> None:
        dev["seq"] += 1
        dev["inflight"] += 1
        packet = _mqtt_packet(0x32, dev["topic"] + ((dev["seq"] - 1) % 65_535 + 1).to_bytes(
            2, "big") + b"\x00" + payload(dev["seq"], int(time.time() * 1000)))
        out.setdefault(id(dev), [dev["sock"]]).append(packet)

    def flush(out: dict[int, list[Any]]) -> None:
        for sock, *packets in out.values():
            sock.sendall(b"".join(packets))

    def read(timeout: float) -> None:
        for key, _ in selector.select(timeout=timeout):
            dev = key.data
            chunk = dev["sock"].recv(65_536)
            if not chunk:
                raise RuntimeError("broker closed a device connection")
            dev["buffer"] += chunk
            for first, body in _mqtt_packets(dev["buffer"]):
                if first >> 4 != 4:
                    raise RuntimeError(f"unexpected packet {first:#x}")
                dev["inflight"] -= 1
                counts["acked"] += 1
                counts["refused"] += len(body) > 2 and body[2] >= 0x80

    out: dict[int, list[Any]] = {}
    for dev in devices:  # warm-up
        send(dev, out)
    flush(out)
    while counts["acked"] < len(devices):
        read(1.0)
    print("ready", flush=True)
    sys.stdin.readline()
    rate = spec["messages_per_s"]
    started = time.monotonic()
    sent = behind = 0
    turn = 0
    while (elapsed := time.monotonic() - started) < spec["seconds"]:
        due = int(elapsed * rate) - sent
        out = {}
        tries = 0
        while due > 0 and tries < len(devices):
            dev = devices[turn % len(devices)]
            turn += 1
            if dev["inflight"] < WINDOW:
                send(dev, out)
                sent += 1
                due -= 1
                tries = 0
            else:
                tries += 1
        flush(out)
        if due > 0:
            behind = max(behind, due)
        read(0.002)
    total = sent + len(devices)
    deadline = time.monotonic() + 300
    while counts["acked"] < total and time.monotonic() < deadline:
        read(1.0)
    for dev in devices:
        dev["sock"].sendall(b"\xe0\x00")
        dev["sock"].close()
    print(json.dumps({"messages": sent, "acked": counts["acked"] - len(devices),
                      "refused": counts["refused"], "behind_max": behind}), flush=True)


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
    print("ready", flush=True)
    while not stop.is_set():
        since, until = queries.default_range(1)
        flt = queries.TelemetryFilter(since=since, until=until)
        for name, call in (
                ("series", lambda: queries.series(flt)),
                ("labels", lambda: queries.label_distribution(flt)),
                ("summary", lambda: queries.summary(flt)),
                ("compare", lambda: queries.compare_versions(flt, 0, 1)),
                ("raw_last_minute", raw_last_minute)):
            t = time.perf_counter()
            call()
            timings.setdefault(name, []).append((time.perf_counter() - t) * 1000)
        stop.wait(0.2)
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

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:  # a dead poller would freeze the figures: reconnect and go on
                conn = conn or self.db.connect()
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=int, help="offered events/s (default 150k; quick 30k)")
    parser.add_argument("--seconds", type=float, help="publishing time (default 180; quick 15)")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=2)
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
    broker = MosquittoInstance(workdir / "broker", free_port(), free_port(),
                               secrets.token_urlsafe(16))
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
        with DynsecAccess(broker.host, broker.port, broker.admin_username,
                          broker.admin_password) as access:
            access.provision_service(*identity, ServiceRole.WORKER)
            for uid, password in passwords.items():
                access.provision_device(uid, password)
        env = django_env(db.url, MQTT_URL=broker.url, MQTT_WORKER_USERNAME=identity[0],
                         MQTT_WORKER_PASSWORD=identity[1], MQTT_WORKER_GROUP="soak",
                         FLEET_VAR_DIR=str(workdir / "var"), FLEET_LOG_LEVEL="INFO",
                         PYTHONPATH=str(ROOT))
        worker_log = workdir / "worker.log"
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "fleet_worker", "--name", "soak", "--no-jobs",
             "--no-rollouts"], cwd=ROOT, env=env, stdout=open(worker_log, "ab"),
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(worker)
        deadline = time.monotonic() + 60
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
                "messages_per_s": args.rate / PER_BATCH / args.publishers,
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
        assert query.stdout is not None and query.stdout.readline().strip() == "ready"
        poller = Poller(db)
        poller.batches = db.scalar("SELECT count(*) FROM telemetry_ingestedbatch")
        poller.last_id = db.scalar("SELECT max(id) FROM telemetry_ingestedbatch")
        warm = poller.batches
        poller.start()
        cpu0 = {"worker": cpu_seconds(worker.pid), "broker": cpu_seconds(broker.pid),
                "postgres": postgres_cpu_seconds()}
        started = time.monotonic()
        for p in publishers:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        time.sleep(args.seconds / 2)
        log(f"half-way ({poller.batches - warm} batches so far): prune_telemetry --days 30")
        t = time.monotonic()
        prune = subprocess.run([sys.executable, "manage.py", "prune_telemetry", "--days", "30"],
                               cwd=ROOT, env=env, capture_output=True, text=True)
        command_s = time.monotonic() - t
        import re

        found = re.search(r"dropped .* in ([0-9.]+) s", prune.stdout)
        drop_s = float(found.group(1)) if found else command_s  # the drops alone
        log(f"prune_telemetry took {command_s:.2f} s (its drops {drop_s:.2f} s): "
            f"{prune.stdout.strip()} {prune.stderr.strip()[-300:]}")
        left = [n for n in old if db.scalar(f"SELECT count(*) FROM pg_class WHERE relname ="
                                            f" '{n}'")]
        published = [json.loads(p.communicate(timeout=args.seconds + 400)[0].strip()
                                .splitlines()[-1]) for p in publishers]
        messages = sum(p["messages"] for p in published)
        want = warm + messages
        deadline = time.monotonic() + 600
        while poller.batches < want and time.monotonic() < deadline:
            if db.scalar("SELECT count(*) FROM telemetry_ingestedbatch") >= want:
                time.sleep(0.2)  # let the poller see the last ones
                break
            time.sleep(0.5)
        log(f"stored {db.scalar('SELECT count(*) FROM telemetry_ingestedbatch') - warm} of "
            f"{messages} timed batches; the poller saw {poller.batches - warm}")
        elapsed = (poller.timeline[-1][0] if poller.timeline else time.monotonic()) - started
        poller.stop.set()
        poller.join()
        cpu = {"worker": cpu_seconds(worker.pid) - cpu0["worker"],
               "broker": cpu_seconds(broker.pid) - cpu0["broker"],
               "postgres": postgres_cpu_seconds() - cpu0["postgres"]}
        timings = json.loads(query.communicate(input="", timeout=120)[0].strip().splitlines()[-1])
        load_after = load_average()
        time.sleep(0.5)
        worker.terminate()
        worker.wait(timeout=60)
        end_session(broker, "soak", *identity)
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
            f"{args.seconds:.0f} s; committed in {elapsed:.1f} s; publishers behind at most "
            f"{max(p['behind_max'] for p in published)} messages; refused "
            f"{sum(p['refused'] for p in published)}; old partitions left {left}")
        log("CPU per event (us): " + ", ".join(f"{k} {v:.2f}" for k, v in per_event.items()))
        log("query ms p50/p95: " + ", ".join(
            f"{k} {percentile(v, 0.5):.1f}/{percentile(v, 0.95):.1f} (n={len(v)})"
            for k, v in timings.items()))
        extra = {"load_avg_before": load_before, "load_avg_after": load_after,
                 "seconds": round(elapsed, 1), "offered_events_per_s": args.rate}
        results += [
            {"metric": "soak_events_per_s", "value": round(rate), "unit": "events/s",
             "baseline": args.rate, "ratio": round(rate / args.rate, 3), **extra},
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
        if pg is not None:
            subprocess.run(["bash", "scripts/postgres.sh", "stop", str(pg[1]), str(pg[2])],
                           cwd=ROOT, check=False)
        if not os.environ.get("FLEET_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    for item in results:
        print(json.dumps(item))


if __name__ == "__main__":
    main()
