"""Enrollment into a big fleet on the real broker: per-device X.509 access against dynsec.

Everything real: PostgreSQL (throwaway, fsync on), ``do_enroll_device`` with the device's
signed proof of possession, and Mosquitto 2 with the X.509 broker-access backend
(``BROKER_ACCESS=x509``, ``fleet/broker/x509.py``): each timed enrollment is the whole
``do_enroll_device`` transaction, which signs the device's certificate (what the answer
carries). The devices' own side (key, signature over the server's nonce) is done before the
timed loop, so the time and CPU are the server's. Then:

1. ``enroll_ms_per_device`` with an empty fleet, then with ``--fleet`` devices already
   enrolled (rows in the database; 1 % of them revoked on the broker's CRL; certificates are a
   function of uid, key and CA, so there is nothing else per device to prefill), with the CPU
   per enrollment of this process (``server``), of this run's PostgreSQL (``postgres``: every
   process of it) and of the backend serving the enrollments (``postgres_backend``), and the
   statements one enrollment sends;
2. ``enroll_http_ms_per_device``: the same fleet, enrolled as a device does it, over HTTP
   through gunicorn with ``deploy/gunicorn.conf.py`` (``bench/enroll_http.py``; rate limits
   raised so that the bench's one address is never throttled), with the CPU of the web
   process, PostgreSQL and the device side, and the statements of both requests;
3. a sample of the devices enrolled last connect to the broker's device listener with their
   certificates and publish on their own topic (``enrolled_devices_connected``);
4. some of them are revoked with ``do_revoke_device`` while connected: the time until the
   broker drops them (``revocation_seconds``, the worst) and whether their reconnection fails;
5. baseline: dynamic security holding ``--fleet`` devices (written into its JSON while the
   broker is stopped, as ``bench/lab.py`` does): the broker step of a few enrollments alone
   (``DynsecAccess.provision_device`` with a long timeout: at 100,000 devices one takes longer
   than the server's 5 s admin timeout, so a real enrollment would be refused with 503).

Prints JSON lines ``{metric, value, unit, baseline, ratio, fleet_devices, load_avg...}``.
Run: ``.venv/bin/python bench/enroll.py [--quick]`` (quick: a 5,000-device fleet).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from enroll_http import RATE, enroll_over_http, http_statements, start_web, web_cpu_seconds
from ingest import postgres_cpu_seconds, start_postgres, stop_postgres
from lab import cpu_seconds, print_figures, remove_workdir, write_dynsec_devices

HARDWARE = "stm32f746"


def log(msg: str) -> None:
    print(f"[enroll] {msg}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prefill_database(count: int) -> list[str]:
    """Create ``count`` enrolled devices in bulk; return their uids."""
    from fleet.devices.models import Device, HardwareProfile

    profile = HardwareProfile.objects.get(name=HARDWARE)
    tag = secrets.token_hex(3)
    uids = [f"fleet-{tag}-{i:06d}" for i in range(count)]
    for start in range(0, count, 10_000):
        Device.objects.bulk_create([
            Device(uid=u, hardware_profile=profile, public_key_pem="-",
                   public_key_fingerprint=hashlib.sha256(u.encode()).hexdigest(),
                   key_algorithm="ed25519") for u in uids[start:start + 10_000]])
    return uids


def prefill_pki(access: Any, uids: list[str], revoked_share: float = 0.01) -> None:
    """Revoke a share of ``uids`` on the CRL, as years of revocations would leave it."""
    ca = access.ca
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    step = int(1 / revoked_share)
    with open(ca.revoked_path, "a") as fh:
        fh.writelines(f"{ca.serial_for(uid):x} {uid} {now}\n" for uid in uids[::step])
    ca.write_crl()
    access._reload()


def own_postgres_cpu_seconds(folder: Path) -> float:
    """CPU seconds of this run's PostgreSQL only (its postmaster and children): other
    PostgreSQL servers on a shared machine are not ours to count."""
    try:
        master = int((folder / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return postgres_cpu_seconds()
    total = cpu_seconds(master)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == master:
                total += cpu_seconds(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


class Timer:
    """Enroll devices one by one through the real action and time each."""

    def __init__(self, token: str, pg_folder: Path) -> None:
        self.token, self.pg_folder = token, pg_folder
        from fleet.devices.models import HardwareProfile

        # What a conforming device of the profile reports (a contradiction would be logged).
        profile = HardwareProfile.objects.get(name=HARDWARE)
        self.caps = {"firmware_version": "bench-1", "tflm_version": "bench",
                     "ops": profile.supported_ops, "arena_bytes": profile.arena_ram_bytes,
                     "slot_bytes": profile.model_slot_bytes, "pointer_bits": 32}
        self.cpu_ms: dict[str, float] = {}

    def run(self, count: int) -> tuple[list[float], list[tuple[Any, Any, str]]]:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from device_sdk.client.identity import public_key_pem, sign_enrollment
        from fleet.devices.actions import EnrollmentProof, do_enroll_device
        from fleet.devices.proof import issue_nonce

        # The devices' side first (key, the server's nonce, the device's signature, as
        # testkit.enrollment does it), so that the timed part and its CPU are the server's.
        requests = []
        for _ in range(count):
            key = ed25519.Ed25519PrivateKey.generate()
            nonce = issue_nonce()
            requests.append((key, public_key_pem(key), EnrollmentProof(
                nonce, sign_enrollment(key, nonce=nonce, token=self.token, uid="",
                                       hardware=HARDWARE, capabilities=self.caps),
                dict(self.caps))))
        times, out = [], []
        backend = self.backend_pid()
        pg0 = own_postgres_cpu_seconds(self.pg_folder), cpu_seconds(backend)
        cpu0 = time.process_time()
        for key, pem, proof in requests:
            started = time.perf_counter()
            result = do_enroll_device(token=self.token, public_key_pem=pem, hardware=HARDWARE,
                                      capabilities=dict(self.caps), proof=proof)
            times.append((time.perf_counter() - started) * 1000)
            assert result.certificate is not None, "BROKER_ACCESS=x509 issues a certificate"
            out.append((result.device, key, result.certificate.certificate_pem))
        # CPU per enrollment holds up better than wall time on a shared machine.
        server = time.process_time() - cpu0
        self.cpu_ms = {"server": server / count * 1000,
                       "postgres": (own_postgres_cpu_seconds(self.pg_folder) - pg0[0])
                       / count * 1000,
                       "postgres_backend": (cpu_seconds(backend) - pg0[1]) / count * 1000}
        return times, out

    @staticmethod
    def backend_pid() -> int:
        """Return the pid of the PostgreSQL backend serving this process's connection: its
        CPU is the statements' alone (``postgres`` also counts the checkpointer, WAL writer
        and autovacuum of the whole server, which the 100,000-row prefill keeps busy)."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    def statements(self) -> int:
        """Return how many SQL statements one enrollment sends (each a round trip)."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as queries:
            self.run(1)
        sent = [q["sql"] for q in queries.captured_queries
                if "pg_backend_pid" not in q["sql"]]  # the bench's own question (run)
        log("one enrollment: " + "; ".join(sql[:48] for sql in sent))
        return len(sent)

    def profile(self, count: int) -> None:
        """Profile ``count`` enrollments by CPU time; log the top functions."""
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(self.run, count)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        log(f"CPU profile of {count} enrollments:\n{out.getvalue()}")


def summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"mean": round(statistics.fmean(times), 2), "p50": round(times[len(times) // 2], 2),
            "p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2),
            "n": len(times)}


def connect_device(broker: Any, device_port: int, folder: Path, uid: str, key: Any,
                   cert: str) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from cryptography.hazmat.primitives import serialization

    (folder / f"{uid}.crt").write_text(cert)
    (folder / f"{uid}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    state: dict[str, Any] = {"connects": [], "disconnects": [], "acks": {},
                             "ready": threading.Event()}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uid, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(broker.ca_cert), certfile=str(folder / f"{uid}.crt"),
              keyfile=str(folder / f"{uid}.key"))
    c.reconnect_delay_set(0.2, 1)

    def on_connect(cl: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        state["connects"].append(rc.value)
        if rc.value == 0:
            state["ready"].set()

    c.on_connect = on_connect
    c.on_disconnect = lambda cl, u, f, rc, p: state["disconnects"].append(time.monotonic())
    c.on_publish = lambda cl, u, mid, rc, p: state["acks"].__setitem__(mid, rc.value)
    c.connect(broker.host, device_port)
    c.loop_start()
    state["client"] = c
    state["ok"] = state["ready"].wait(10)
    if state["ok"]:
        mid = c.publish(f"fleet/v1/{uid}/events", b"x", qos=1).mid
        deadline = time.monotonic() + 5
        while mid not in state["acks"] and time.monotonic() < deadline:
            time.sleep(0.01)
        state["ok"] = state["acks"].get(mid, 255) < 128
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fleet", type=int, help="devices already enrolled (100k; quick 5k)")
    parser.add_argument("--measure", type=int, help="timed enrollments per point (300; quick 60)")
    parser.add_argument("--dynsec", type=int, default=3, help="timed dynsec enrollments")
    parser.add_argument("--http", type=int,
                        help="timed enrollments over HTTP, through gunicorn (100; quick 20)")
    parser.add_argument("--connect", type=int, default=20)
    parser.add_argument("--revoke", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="also profile 100 enrollments into the full fleet (CPU time, "
                             "cProfile) and print the top functions to stderr")
    args = parser.parse_args()
    args.fleet = args.fleet or (5_000 if args.quick else 100_000)
    args.measure = args.measure or (30 if args.quick else 300)
    args.http = args.http or (20 if args.quick else 100)
    if args.quick:
        args.dynsec = min(args.dynsec, 2)

    from fleet.broker.mosquitto import MosquittoInstance
    from fleet.broker.x509 import write_broker_template
    from testkit.broker import free_port

    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-enroll-"))
    os.chmod(workdir, 0o755)
    pg = None
    brokers: list[Any] = []
    results: list[dict[str, Any]] = []
    clients: list[Any] = []
    web = None
    try:
        pg = start_postgres(workdir)
        admin_password = secrets.token_urlsafe(16)
        pki = workdir / "broker" / "pki"
        device_port = free_port()
        broker = MosquittoInstance(workdir / "broker", free_port(), free_port(), admin_password,
                                   template=write_broker_template(pki, device_port))
        brokers.append(broker)
        os.environ.update({
            "DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_DEBUG": "0",
            "SECRET_KEY": "bench-" + secrets.token_hex(24), "DATABASE_URL": pg[0],
            "FLEET_VAR_DIR": str(workdir / "var"), "FLEET_KEK": "bench-" + secrets.token_hex(16),
            "MQTT_URL": broker.url, "MQTT_DEVICE_URL": f"mqtts://127.0.0.1:{device_port}",
            "MQTT_ADMIN_USERNAME": broker.admin_username, "MQTT_ADMIN_PASSWORD": admin_password,
            "BROKER_ACCESS": "x509", "BROKER_X509_DIR": str(pki),
            "BROKER_PID_FILE": str(broker.pid_file), "FLEET_LOG_LEVEL": "WARNING",
            "MQTT_CA_FILE": str(broker.ca_cert),
            # HTTP on loopback (nginx terminates TLS in a deployment); rate limits that never
            # throttle this one client address (enroll_http.RATE).
            "SECURE_SSL_REDIRECT": "0", "ENROLL_RATE": RATE, "ENROLL_CHALLENGE_RATE": RATE,
            "PYTHONPATH": str(ROOT)})
        import django

        django.setup()
        from django.core.management import call_command
        from django.utils import timezone

        call_command("migrate", verbosity=0)
        from fleet.broker.configured import broker_access
        from fleet.devices.actions import do_create_enrollment_token, do_revoke_device

        access = broker_access()
        access.ensure_admin()  # type: ignore[union-attr]
        broker.start()
        _, token = do_create_enrollment_token(
            actor=None, expires_at=timezone.now() + timezone.timedelta(days=1),
            max_uses=2 * args.measure + args.http + 120)  # warm-up, statements, profile
        timer = Timer(token, pg[1])
        timer.run(5)  # warm-up: imports, connections, caches
        empty_times, _ = timer.run(args.measure)
        empty = summary(empty_times)
        log(f"x509, empty fleet: {empty}")
        t = time.monotonic()
        uids = prefill_database(args.fleet)
        prefill_pki(access, uids)
        log(f"prefilled {args.fleet:,} devices (database rows; "
            f"{len(uids) // 100} of them revoked on the CRL) in {time.monotonic() - t:.1f} s")
        load_before = load_average()
        full_times, enrolled = timer.run(args.measure)
        load_after = load_average()
        full = summary(full_times)
        cpu = {k: round(v, 2) for k, v in timer.cpu_ms.items()}
        log(f"x509, {args.fleet:,} devices: {full}; per enrollment (ms): {cpu}")
        statements = timer.statements()
        if args.profile:
            timer.profile(100)
        # Over HTTP, as a device enrolls: gunicorn (deploy config), the SDK's enroll.
        http_statement_count = http_statements(token, HARDWARE, timer.caps)
        web = start_web(workdir, free_port())
        http_folder = workdir / "http-devices"
        enroll_over_http(web, token, HARDWARE, timer.caps, http_folder / "warm-up", 3)
        pg0, web0 = own_postgres_cpu_seconds(pg[1]), web_cpu_seconds(web)
        device0 = time.process_time()
        http_load_before = load_average()
        http_times, _ = enroll_over_http(web, token, HARDWARE, timer.caps, http_folder,
                                         args.http)
        http_load_after = load_average()
        http_cpu = {"web": (web_cpu_seconds(web) - web0) / args.http * 1000,
                    "postgres": (own_postgres_cpu_seconds(pg[1]) - pg0) / args.http * 1000,
                    "device": (time.process_time() - device0) / args.http * 1000}
        http_cpu = {k: round(v, 2) for k, v in http_cpu.items()}
        web.stop()
        web = None
        http = summary(http_times)
        log(f"x509 over HTTP, {args.fleet:,} devices: {http}; per enrollment (ms): {http_cpu}; "
            f"{http_statement_count} statements")
        # Enrolled devices use their certificates at the broker.
        folder = workdir / "devices"
        folder.mkdir()
        clients = [connect_device(broker, device_port, folder, d.uid, k, c)
                   for d, k, c in enrolled[-args.connect:]]
        connected = sum(1 for c in clients if c["ok"])
        # Revocation while connected.
        cuts, refused = [], 0
        for (device, _, _), state in zip(enrolled[-args.revoke:], clients[-args.revoke:]):
            started = time.monotonic()
            do_revoke_device(device, actor=None)
            while not state["disconnects"] and time.monotonic() - started < 10:
                time.sleep(0.005)
            cuts.append(state["disconnects"][0] - started if state["disconnects"] else 99.0)
        time.sleep(2.0)  # paho retries every 0.2-1 s: every handshake must fail
        for state in clients[-args.revoke:]:
            refused += len(state["connects"]) == 1
            state["client"].loop_stop()
        log(f"{connected} of {len(clients)} connected; revoked {args.revoke}: cut after "
            f"{', '.join(f'{c:.3f}' for c in cuts)} s, {refused} never got back in")
        # Baseline: dynamic security holding the same fleet.
        from fleet.broker.mosquitto import BrokerError

        dyn_password = secrets.token_urlsafe(16)
        for attempt in range(3):  # a free port may be taken by another process meanwhile
            dyn = MosquittoInstance(workdir / f"dynsec{attempt}", free_port(), free_port(),
                                    dyn_password)
            brokers.append(dyn)
            dyn.prepare()
            t = time.monotonic()
            write_dynsec_devices(dyn.dynsec_file, {u: secrets.token_urlsafe(8) for u in uids})
            try:
                dyn.start(timeout=300)
                break
            except BrokerError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                log("dynsec baseline: port taken meanwhile; again on other ports")
        log(f"dynsec with {args.fleet:,} devices written and started in "
            f"{time.monotonic() - t:.1f} s")
        # The broker step alone, with time to answer (the server's admin timeout is 5 s:
        # past that an enrollment is refused with 503 broker_unavailable).
        from fleet.broker.dynsec import DynsecAccess

        dyn_times, refused_5s = [], 0
        with DynsecAccess(dyn.host, dyn.port, dyn.admin_username, dyn_password,
                          timeout=600) as admin:
            for _ in range(args.dynsec):
                t = time.perf_counter()
                admin.provision_device(f"dyn-{secrets.token_hex(4)}", secrets.token_urlsafe(12))
                dyn_times.append((time.perf_counter() - t) * 1000)
        refused_5s = sum(1 for x in dyn_times if x > 5000)
        dynsec = summary(dyn_times)
        log(f"dynsec provision_device alone, {args.fleet:,} devices: {dynsec}; "
            f"{refused_5s} over the 5 s admin timeout")
        common = {"fleet_devices": args.fleet, "load_avg_before": load_before,
                  "load_avg_after": load_after}
        results += [
            {"metric": "enroll_ms_per_device", "value": full["mean"], "unit": "ms",
             "baseline": dynsec["mean"], "ratio": round(full["mean"] / dynsec["mean"], 4),
             "backend": "x509", "p50": full["p50"], "p95": full["p95"], "n": full["n"],
             "baseline_is": f"dynsec provision_device alone at the same fleet size (n="
                            f"{dynsec['n']}, {refused_5s} over the 5 s admin timeout)",
             "cpu_ms": cpu, "statements_per_enrollment": statements, **common},
            {"metric": "enroll_http_ms_per_device", "value": http["mean"], "unit": "ms",
             "baseline": full["mean"], "ratio": round(http["mean"] / full["mean"], 4),
             "baseline_is": "enroll_ms_per_device: the action alone, in process",
             "backend": "x509", "p50": http["p50"], "p95": http["p95"], "n": http["n"],
             "cpu_ms": http_cpu, "statements_per_enrollment": http_statement_count,
             "path": "device_sdk enroll: POST challenge + POST enroll, gunicorn "
                     "deploy/gunicorn.conf.py, 1 web process, loopback HTTP",
             "throttle": f"ENROLL_RATE=ENROLL_CHALLENGE_RATE={RATE}: counted, never throttles",
             "fleet_devices": args.fleet, "load_avg_before": http_load_before,
             "load_avg_after": http_load_after},
            {"metric": "enroll_ms_per_device_empty_fleet", "value": empty["mean"], "unit": "ms",
             "baseline": None, "ratio": None, "backend": "x509", "p50": empty["p50"],
             "p95": empty["p95"], "n": empty["n"], "fleet_devices": 0},
            {"metric": "enrolled_devices_connected", "value": connected, "unit": "devices",
             "baseline": len(clients), "ratio": round(connected / max(len(clients), 1), 3),
             **common},
            {"metric": "revocation_seconds", "value": round(max(cuts), 3), "unit": "s",
             "baseline": 5.0, "ratio": round(max(cuts) / 5.0, 3), "revoked": len(cuts),
             "reconnect_refused": refused, **common},
        ]
    finally:
        if web is not None:
            web.stop()
        for state in clients:
            with contextlib.suppress(RuntimeError, OSError):  # already stopped
                state["client"].loop_stop()
        for b in brokers:
            b.stop()
        stop_postgres(pg)
        remove_workdir(workdir)
    print_figures(results)


if __name__ == "__main__":
    main()
