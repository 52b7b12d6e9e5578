"""Measure end-to-end telemetry ingest: device publishers -> Mosquitto -> fleet worker -> database.

Starts its own Mosquitto (dynamic security, free loopback ports), its own PostgreSQL
(scripts/postgres.sh, needs root) and a SQLite file database, all in one temporary folder, and
migrates both databases with ``manage.py migrate``. For each database: devices are created (rows
and broker credentials), the real worker (``manage.py fleet_worker``) is started and subscribed,
then publisher processes (one MQTT 5 connection per device, client id = username = device
uid, QoS 1, at most 50 unacknowledged) send pre-encoded batches as fast as the broker takes
them. Each device's first batch is a warm-up, sent and stored before the clock starts, so the
figure is the worker's steady rate, not its cold start (its first sight of each device costs a
database lookup). The rate is the other events over the time from their first publish to the
commit of the last batch; then every stored row (warm-up included) is checked for loss and
duplicates. The baseline is the raw insert rate of as many rows into an equivalent table
(telemetry_event's columns and indexes) of the same database, encoded before the clock starts:
binary COPY on PostgreSQL, executemany on SQLite, in transactions of 64k rows (about what the
worker writes per transaction).

Prints one JSON object per figure at the end: ``{"metric", "value", "unit", "baseline",
"ratio"}``. On stderr it also prints the CPU time per event of each process (worker, broker,
publishers, PostgreSQL server), which holds up better than wall-clock rates on a shared
machine, and the rate those CPU costs allow at most.

The devices' side (``bench/ingest_publisher.py``) costs a few µs of CPU per message: the
publishers write pre-encoded MQTT packets to plain sockets (``--publisher-client paho`` uses
paho, ~75 µs per message), because they share the machine with what is measured.

Run: ``.venv/bin/python bench/ingest.py [--quick] [--profile]``; ``--profile`` runs the
worker under cProfile (its main thread) and prints its top functions to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from ingest_publisher import START_MS
from lab import cpu_seconds, print_figures, remove_workdir

READY_LINE = "subscriptions granted"


def log(msg: str) -> None:
    """Report progress on stderr (stdout carries only the figures)."""
    print(f"[ingest] {msg}", file=sys.stderr, flush=True)


# -- databases ------------------------------------------------------------------------------


def django_env(db_url: str, **extra: str) -> dict[str, str]:
    """Return the environment of a manage.py subprocess on ``db_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "DATABASE_"))}
    # DEBUG off, as in production (with it on, Django keeps and times every query).
    env.update({"DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_DEBUG": "0",
                "SECRET_KEY": "bench-" + secrets.token_hex(24),
                "DATABASE_URL": db_url, "PYTHONUNBUFFERED": "1", **extra})
    return env


def broker_admin_settings() -> None:
    """Give this process the one setting the broker admin reads (a device's grants depend on
    FANOUT_ACCESS), as the server has it, without a database or Django apps."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(FANOUT_ACCESS=os.environ.get("FANOUT_ACCESS", "encrypt"))


def run_setup_db(count: int) -> None:
    """Create ``count`` devices in the database of DATABASE_URL; print uid -> id as JSON."""
    import django

    django.setup()
    from fleet.devices.models import Device, HardwareProfile

    profile = HardwareProfile.objects.order_by("name").first()
    assert profile is not None, "stock hardware profiles missing (migrate first)"
    tag = secrets.token_hex(3)
    uids = [f"tinyml-{tag}-{i:05d}" for i in range(count)]  # 19 characters
    Device.objects.bulk_create([
        Device(uid=u, hardware_profile=profile, public_key_pem="-", public_key_fingerprint=u,
               key_algorithm="ed25519") for u in uids])
    print(json.dumps(dict(Device.objects.filter(uid__in=uids).values_list("uid", "id"))))


class Database:
    """A bench database: its URL, a raw DB-API connection, and its vendor's quirks."""

    def __init__(self, vendor: str, url: str, sqlite_path: Path | None = None) -> None:
        self.vendor, self.url, self.sqlite_path = vendor, url, sqlite_path

    def connect(self) -> Any:
        """Return a raw autocommit connection."""
        if self.vendor == "sqlite":
            conn = sqlite3.connect(str(self.sqlite_path), isolation_level=None, timeout=20)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def scalar(self, sql: str) -> int:
        """Return the first column of the first row of ``sql``."""
        conn = self.connect()
        try:
            return int(conn.execute(sql).fetchone()[0] or 0)
        finally:
            conn.close()

    def migrate(self) -> subprocess.Popen[bytes]:
        """Start creating the schema with the project's migrations; return the process."""
        return subprocess.Popen([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT,
                                env=django_env(self.url))

    def devices(self, count: int) -> dict[str, int]:
        """Create devices; return uid -> id."""
        out = subprocess.run([sys.executable, __file__, "--role", "setup-db", "--devices",
                              str(count)], cwd=ROOT, env=django_env(self.url), check=True,
                             capture_output=True, text=True)
        return json.loads(out.stdout)


def baseline_rows_per_s(db: Database, rows: int, txn_rows: int) -> float:
    """Insert ``rows`` event rows into a copy of telemetry_event; return rows per second."""
    conn = db.connect()
    try:
        if db.vendor == "postgresql":
            conn.execute("DROP TABLE IF EXISTS bench_raw_event")
            conn.execute("CREATE TABLE bench_raw_event (LIKE telemetry_event INCLUDING ALL)")
        else:
            conn.execute("DROP TABLE IF EXISTS bench_raw_event")
            for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE tbl_name ="
                                       " 'telemetry_event' AND sql IS NOT NULL").fetchall():
                sql = sql.replace('"telemetry_event"', '"bench_raw_event"')
                conn.execute(sql.replace("INDEX \"", "INDEX \"bench_"))
        rng = random.Random(7)
        data = [(i % 97, 0, i // 32, datetime.fromtimestamp(START_MS / 1000 + i, tz=UTC),
                 rng.randrange(8), rng.randrange(256), rng.randrange(400)) for i in range(rows)]
        columns = "device_id, model_version_id, seq, ts, label, score, latency_100us"
        if db.vendor == "sqlite":  # stored as text, like Django does
            data = [(*r[:3], r[3].strftime("%Y-%m-%d %H:%M:%S.%f"), *r[4:]) for r in data]
        else:  # binary COPY tuples, encoded before the clock starts: the database's own rate
            tuple_ = struct.Struct(">h iq ii iq iq ih ih ii")
            epoch = datetime(2000, 1, 1, tzinfo=UTC)
            data = [tuple_.pack(7, 8, d, 4, mv, 8, seq, 8, (ts - epoch) // timedelta(
                microseconds=1), 2, label, 2, score, 4, lat)
                for d, mv, seq, ts, label, score, lat in data]
        started = time.perf_counter()
        for start in range(0, rows, txn_rows):
            chunk = data[start:start + txn_rows]
            if db.vendor == "postgresql":
                with conn.transaction(), conn.cursor() as cur, cur.copy(
                        f"COPY bench_raw_event ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(b"".join([b"PGCOPY\n\xff\r\n\x00" + bytes(8), *chunk,
                                         b"\xff\xff"]))
            else:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(f"INSERT INTO bench_raw_event ({columns}) VALUES"
                                 " (?,?,?,?,?,?,?)", chunk)
                conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE bench_raw_event")
        return rows / elapsed
    finally:
        conn.close()


# -- the end-to-end run ---------------------------------------------------------------------


class Run:
    """One end-to-end measurement against one database."""

    def __init__(self, args: argparse.Namespace, broker: Any, db: Database, workdir: Path,
                 worker_identity: tuple[str, str]) -> None:
        self.args, self.broker, self.db, self.workdir = args, broker, db, workdir
        self.worker_identity = worker_identity

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start the worker and wait until its subscriptions are granted."""
        log_path = self.workdir / f"worker-{name}.log"
        env = django_env(self.db.url, MQTT_URL=self.broker.url,
                         MQTT_WORKER_USERNAME=self.worker_identity[0],
                         MQTT_WORKER_PASSWORD=self.worker_identity[1],
                         MQTT_WORKER_GROUP="bench", FLEET_VAR_DIR=str(self.workdir / "var"),
                         FLEET_LOG_LEVEL="INFO")  # the ready line is an INFO record
        cmd = [sys.executable]
        if self.args.profile:
            cmd += ["-m", "cProfile", "-o", str(self.workdir / f"worker-{name}.prof")]
        cmd += ["manage.py", "fleet_worker", "--name", name, "--no-jobs", "--no-rollouts"]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while READY_LINE not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return proc

    def measure(self) -> dict[str, float]:
        """Publish everything, wait until stored; return rate, loss and duplicates."""
        a = self.args
        passwords = self.provision_devices()
        batches = a.events // a.per_batch // a.devices
        expected = batches * a.per_batch * a.devices
        names = [f"bench-{self.db.vendor}-{i}" for i in range(a.workers)]
        workers = [self.start_worker(name) for name in names]
        publishers = self.start_publishers(passwords, batches)
        self.wait_stored(a.devices, time.monotonic())  # the warm-up batches
        timed = expected - a.devices * a.per_batch
        log(f"{self.db.vendor}: {timed} events from {a.devices} devices in "
            f"{(batches - 1) * a.devices} batches of {a.per_batch}, {a.publishers} publishers"
            f" (after a warm-up batch per device)")
        worker_cpu = -sum(cpu_seconds(w.pid) for w in workers)
        worker_main_cpu = -sum(cpu_seconds(w.pid, w.pid) for w in workers)
        broker_cpu = -cpu_seconds(self.broker.pid)
        db_cpu = -cluster_cpu_seconds(self.workdir / "pg")
        publisher_cpu = -sum(cpu_seconds(p.pid) for p in publishers)
        started = time.monotonic()
        for p in publishers:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        self.wait_stored(batches * a.devices, started)
        elapsed = time.monotonic() - started
        publisher_cpu += sum(cpu_seconds(p.pid) for p in publishers)
        published = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
                     for p in publishers]
        time.sleep(0.5)  # anything redelivered late would land now
        worker_cpu += sum(cpu_seconds(w.pid) for w in workers)
        worker_main_cpu += sum(cpu_seconds(w.pid, w.pid) for w in workers)
        broker_cpu += cpu_seconds(self.broker.pid)
        db_cpu += cluster_cpu_seconds(self.workdir / "pg")
        for worker, name in zip(workers, names, strict=True):
            worker.terminate()
            worker.wait(timeout=30)
            # A stopped worker's session keeps its share of the shared subscription: end it,
            # or the broker would go on queueing for it during the next run.
            from testkit.worker import end_session

            end_session(self.broker, name, *self.worker_identity)
        rows = self.db.scalar("SELECT count(*) FROM telemetry_event")
        unique = a.per_batch * self.db.scalar(
            "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM telemetry_event) AS b")
        rolled = self.db.scalar("SELECT sum(count) FROM telemetry_rollup")
        log(f"{self.db.vendor}: stored in {elapsed:.2f} s (publishers done in "
            f"{max(p['seconds'] for p in published):.2f} s, "
            f"{sum(p['refused'] for p in published)} refused); rows {rows}, rollup sum "
            f"{rolled}")
        cpu = {"worker": worker_cpu, "broker": broker_cpu, "publishers": publisher_cpu,
               "postgres": db_cpu if self.db.vendor == "postgresql" else 0.0}
        per_event = {k: v / timed * 1e6 for k, v in cpu.items()}
        log(f"{self.db.vendor}: CPU per event (us): " + ", ".join(
            f"{k} {v:.1f}" for k, v in per_event.items()) + f"; with {os.cpu_count()} cores "
            f"fully used these allow at most {os.cpu_count() / sum(per_event.values()) * 1e6:,.0f}"
            f" events/s, one worker process at most {1e6 / per_event['worker']:,.0f}")
        # The main thread decodes and writes; the rest is paho's network thread (receive, ack).
        log(f"{self.db.vendor}: worker CPU per event (us): main thread "
            f"{worker_main_cpu / timed * 1e6:.1f}, other threads (MQTT) "
            f"{(worker_cpu - worker_main_cpu) / timed * 1e6:.1f}")
        if a.profile:
            import pstats

            stats = pstats.Stats(str(self.workdir / f"worker-{names[0]}.prof"),
                                 stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)
        # Lost: batches with no rows. Duplicated: rows beyond one copy per batch, and rollup
        # counts beyond the rows (a batch counted twice in the rollups only).
        return {"rate": timed / elapsed, "lost": expected - unique,
                "duplicated": rows - unique + max(rolled - rows, 0)}

    def provision_devices(self) -> dict[str, str]:
        """Create the devices' rows and broker credentials; return uid -> password."""
        from fleet.broker.dynsec import DynsecAccess

        broker_admin_settings()
        passwords = {uid: secrets.token_urlsafe(12) for uid in self.db.devices(self.args.devices)}
        with DynsecAccess(self.broker.host, self.broker.port, self.broker.admin_username,
                          self.broker.admin_password) as access:
            for uid, password in passwords.items():
                access.provision_device(uid, password)
        return passwords

    def start_publishers(self, passwords: dict[str, str],
                         batches: int) -> list[subprocess.Popen[str]]:
        """Start the publisher processes and wait until each has connected its devices."""
        a, uids, publishers = self.args, sorted(passwords), []
        for i in range(a.publishers):
            spec = self.workdir / f"publisher-{self.db.vendor}-{i}.json"
            spec.write_text(json.dumps({
                "host": self.broker.host, "port": self.broker.port, "batches": batches,
                "per_batch": a.per_batch, "seed": i, "client": a.publisher_client,
                "devices": [(u, passwords[u]) for u in uids[i::a.publishers]]}))
            publishers.append(subprocess.Popen(
                [sys.executable, __file__, "--role", "publisher", "--spec", str(spec)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in publishers:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return publishers

    def wait_stored(self, want: int, started: float) -> None:
        """Poll until ``want`` batches are stored (or the timeout passed)."""
        conn = self.db.connect()
        try:
            while True:
                # max(id) is an index lookup, and no smaller than the count (ids are distinct
                # and positive): count the rows, a scan, only once it could be enough.
                top = int(conn.execute(
                    "SELECT max(id) FROM telemetry_ingestedbatch").fetchone()[0] or 0)
                if top >= want and int(conn.execute(
                        "SELECT count(*) FROM telemetry_ingestedbatch").fetchone()[0]) >= want:
                    return
                if time.monotonic() - started > self.args.timeout:
                    have = self.db.scalar("SELECT count(*) FROM telemetry_ingestedbatch")
                    log(f"timed out with {have} of {want} batches stored")
                    return
                time.sleep(0.005)
        finally:
            conn.close()


def postgres_cpu_seconds() -> float:
    """Return the CPU time used so far by every process of the postgres user (the server)."""
    import pwd

    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return 0.0
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == uid:
                total += cpu_seconds(int(proc.name))
        except OSError:
            continue  # gone meanwhile
    return total


def cluster_cpu_seconds(folder: Path) -> float:
    """CPU seconds of one PostgreSQL cluster (``start_postgres``'s folder): its postmaster,
    the children it has reaped (backends that exited) and those alive. Other clusters on a
    shared machine run as the same user: ``postgres_cpu_seconds`` would count them too."""
    try:
        master = int((folder / "data" / "postmaster.pid").read_text().split()[0])
        fields = Path(f"/proc/{master}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return postgres_cpu_seconds()
    total = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                total += cpu_seconds(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def start_postgres(workdir: Path) -> tuple[str, Path, int]:
    """Start a throwaway PostgreSQL with scripts/postgres.sh; return URL, folder and port."""
    from testkit.broker import free_port

    port = free_port()
    folder = workdir / "pg"
    # fsync on, as in production: an acknowledged event must survive a crash of the machine.
    url = subprocess.run(["bash", "scripts/postgres.sh", "start", str(folder), str(port)],
                         cwd=ROOT, check=True, capture_output=True, text=True,
                         env={**os.environ, "PG_FSYNC": "on"}).stdout.strip()
    return url, folder, port


def stop_postgres(pg: tuple[str, Path, int] | None) -> None:
    """Stop what :func:`start_postgres` started (None: nothing was)."""
    if pg is not None:
        subprocess.run(["bash", "scripts/postgres.sh", "stop", str(pg[1]), str(pg[2])],
                       cwd=ROOT, check=False)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, same code path")
    parser.add_argument("--profile", action="store_true", help="run the worker under cProfile")
    parser.add_argument("--events", type=int, help="events per database")
    parser.add_argument("--per-batch", type=int, default=32)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--publisher-client", choices=["raw", "paho"], default="raw",
                        help="devices' MQTT client: pre-encoded packets on plain sockets, or paho")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (shared sub)")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--role", choices=["publisher", "setup-db"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "publisher":
        from ingest_publisher import run_publisher

        return run_publisher(args.spec)
    if args.role == "setup-db":
        return run_setup_db(args.devices)
    # Quick is still a third of the full run: below ~100k events the worker's start and its
    # 50 ms batch window weigh more than its throughput (16k events took ~0.3 s at any speed).
    args.events = args.events or (160_000 if args.quick else 480_000)
    if args.quick:
        args.devices = min(args.devices, 10)

    from fleet.broker.access import ServiceRole
    from fleet.broker.dynsec import DynsecAccess
    from fleet.broker.mosquitto import MosquittoInstance
    from testkit.broker import free_port

    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-ingest-"))
    os.chmod(workdir, 0o755)  # the postgres user must reach its data folder
    broker = MosquittoInstance(workdir / "broker", free_port(), free_port(),
                               secrets.token_urlsafe(16))
    pg: tuple[str, Path, int] | None = None
    results: list[dict[str, Any]] = []
    try:
        broker.start()
        identity = ("bench-worker", secrets.token_urlsafe(16))
        with DynsecAccess(broker.host, broker.port, broker.admin_username,
                          broker.admin_password) as access:
            access.provision_service(*identity, ServiceRole.WORKER)
        dbs = []
        if args.db in ("sqlite", "both"):
            path = workdir / "bench.sqlite3"
            dbs.append(Database("sqlite", f"sqlite:///{path}", path))
        if args.db in ("postgresql", "both"):
            pg = start_postgres(workdir)
            dbs.append(Database("postgresql", pg[0]))
        for migration in [db.migrate() for db in dbs]:  # side by side: each is mostly waiting
            if migration.wait() != 0:
                raise RuntimeError("manage.py migrate failed")
        lost = duplicated = 0
        for db in dbs:
            vendor = db.vendor
            # Best of two passes: the first one on a fresh server also pays for warming up.
            rows = 32_000 if args.quick else min(max(args.events, 64_000), 192_000)
            baseline = max(baseline_rows_per_s(db, rows, 64_000) for _ in range(2))
            log(f"{vendor}: baseline {baseline:,.0f} rows/s")
            figures = Run(args, broker, db, workdir, identity).measure()
            lost += figures["lost"]
            duplicated += figures["duplicated"]
            metric = "events_per_s_postgres" if vendor == "postgresql" else "events_per_s_sqlite"
            results.append({"metric": metric, "value": round(figures["rate"]),
                            "unit": "events/s", "baseline": round(baseline),
                            "ratio": round(figures["rate"] / baseline, 3)})
        results.append({"metric": "lost_events", "value": lost, "unit": "events",
                        "baseline": 0, "ratio": None})
        results.append({"metric": "duplicated_events", "value": duplicated, "unit": "events",
                        "baseline": 0, "ratio": None})
    finally:
        broker.stop()
        stop_postgres(pg)
        remove_workdir(workdir)
    print_figures(results)


if __name__ == "__main__":
    main()
