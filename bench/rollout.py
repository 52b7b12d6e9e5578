"""Measure one OTA rollout end to end: a real Mosquitto, the real worker (controller + carousel
+ OTA consumers), and an in-process simulated fleet taking a ~100 KB int8 model over MQTT.

What runs (all started here, all stopped at the end, even on error):

- Mosquitto (fleet.broker.mosquitto.MosquittoInstance, dynamic security, free loopback ports)
  rendered from the project's template plus ``sys_interval 1`` so the $SYS byte counters are
  published every second instead of every ten;
- the database: a throwaway PostgreSQL (scripts/postgres.sh, fsync on; ``--database sqlite``:
  a SQLite file) in the temporary folder, migrated in this process (``rollout_db``);
- two versions of a Dense 16-H-4 int8 MLP (H = 4200: ~100 KB), trained with TensorFlow in a
  subprocess (TF never loads in this process) and cached in the temp folder by build
  parameters, uploaded through ota.registry.actions (the real admission check runs);
- devices enrolled in-process (do_enroll_device + the identity files the simulator reads, as
  tests/ota/rollouts/test_rollout_e2e.py does), all starting on v1's package;
- ``manage.py fleet_worker --no-jobs`` with its rollouts thread, as a subprocess;
- the simulator (device_sdk.simulator.Simulator) with OTA on, telemetry nearly off: in this
  process up to 2,000 devices, else split over ``--sim-processes`` children (default 2; one
  Python process takes at most one core's worth of devices); the devices' files (slots,
  download, identity, outbox) in /dev/shm, standing for each device's own flash (see
  ``rollout_fleet.sim_state_dir``). Django runs with DEBUG off, as in production.

The rollout offers v2 to every device in one wave of 100 % (offers_per_minute = 1,000,000,
max_concurrent >= devices). Its package is the one the rollout builds itself, as for a user
(``do_build_package`` picks the smallest encoding: compressed for these models), and each
simulated device decodes its own copy with the firmware's C transfer decoder
(``make -C firmware libtransfer``, built here; device_sdk/simulator/c_transfer.py). Without a C
compiler, or with ``--package-encoding raw``, the package is built RAW first and reused (the
Python decoder needs ~0.2 s per 100 KB compressed: too slow for thousands of simulated
devices on 2 cores). The ``database`` and ``package_encoding`` lines say which.

Figures (one JSON object per line at the end):

- ``devices_confirmed``: devices whose deployment is CONFIRMED; baseline = devices targeted.
- ``rollout_seconds``: from Rollout.started_at (do_start_rollout) to the last confirmed_at
  (both server clock); if not all confirmed before the time limit, the time waited.
- ``server_egress_ratio``: package bytes the worker published for the wave (its counters
  ota_fanout_bytes + ota_unicast_bytes, read from WorkerStats after one more save) divided by
  transfer_size x devices; baseline 1.0 = every device fetching the package by unicast.
- ``wire_overhead``: (bytes through the broker - transfer_size x devices) / (transfer_size x
  devices). Bytes through the broker = the growth of Mosquitto's own $SYS/broker/bytes/received
  + $SYS/broker/bytes/sent from just before the rollout starts to after it is done (read by a
  monitor client with the admin identity, which may subscribe to $SYS). These are MQTT packet
  bytes (TLS record overhead not included) of everything: offers, reports, chunk requests,
  fan-out and unicast chunks with their framing, acks, pings, the monitor's own $SYS messages,
  and the little telemetry the devices send meanwhile. ``broker_bytes_sent`` and
  ``broker_bytes_received`` are printed too. Its ``breakdown`` says where the bytes went, by
  kind of message (``rollout_wire.wire_breakdown``): every packet the devices sent and
  received, counted whole by device_sdk.mqtt.link.WireTally, plus the worker's leg of the same
  messages rebuilt from them; ``unattributed`` is the rest of the broker's count (the $SYS
  updates, bytes still in flight when the run ends). The shares add up to ``wire_overhead``.
- ``rollout_cpu_seconds``: CPU seconds of each process (this one, the worker, the broker,
  the simulator children, PostgreSQL's postmaster and backends) over the rollout, with the
  load average: wall-clock figures on a shared 2-core box are read against these.
- ``package_bytes``: the transfer size of the rollout's package (and the model size).

Run: ``.venv/bin/python bench/rollout.py [--quick] [--devices N] [--sim-processes P]
[--database postgresql|sqlite] [--package-encoding auto|raw]`` (quick: 100 devices).
FLEET_BENCH_KEEP=1 keeps the temporary folder (logs, database) for a look afterwards.
This file is the entry point and the run's phases; the simulated fleet and its enrollment
are in ``bench/rollout_fleet.py``, the broker byte counters and the wire breakdown in
``bench/rollout_wire.py``, the models in ``bench/rollout_models.py``, the database in
``bench/rollout_db.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from lab import CpuMeter, bench_broker, finish, setup_django  # bench/ is this script's folder
from rollout_db import BenchDatabase
from rollout_fleet import (
    BULK_ENROLL_OVER,
    LocalFleet,
    ProcessFleet,
    enroll,
    run_sim_process,
    sim_config,
    sim_state_dir,
)
from rollout_models import models, run_build_models
from rollout_wire import SysMonitor, fanout_server_bytes, wire_breakdown

HARDWARE = "stm32f746"  # default class; --hardware picks another (the fan-out chunk follows it)
READY_LINE = "subscriptions granted"


def log(msg: str) -> None:
    """Report progress on stderr (stdout carries only the figures)."""
    print(f"[rollout] {msg}", file=sys.stderr, flush=True)


def build_c_decoder() -> bool:
    """Build the firmware's transfer decoder for the simulator (make -C firmware libtransfer)."""
    done = subprocess.run(["make", "-C", str(ROOT / "firmware"), "libtransfer"],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        log(f"make libtransfer failed: {done.stderr[-500:]}")
    return done.returncode == 0


def start_worker(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``fleet_worker`` with its rollouts thread; wait until it consumes."""
    log_path = workdir / "worker.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "fleet_worker", "--name", "bench-rollout", "--no-jobs"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while READY_LINE not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


def stop_worker(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- the run -------------------------------------------------------------------------------


def wait_until(check: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def delta_rollout(base: Any, base_package_id: int, target: Any, profile: Any, count: int,
                  monitor: SysMonitor, full_per_device: float,
                  fleet_size: int = 0) -> list[dict[str, Any]]:
    """Roll ``target`` (v2 with a fine-tuned head) out to ``count`` devices as a delta from
    ``base`` and compare the broker bytes per device with the full rollout's."""
    from device_sdk.protocol.ota_messages import DeploymentState
    from fleet.devices.models import Device
    from ota.choices import Encoding
    from ota.packaging.actions import do_build_package
    from ota.rollouts import actions
    from ota.rollouts.models import Deployment

    package = do_build_package(target, profile, actor=None, base=base, encoding=Encoding.DELTA)
    chosen = list(Device.objects.filter(running_package_id=base_package_id).order_by("id")[:count])
    rollout = actions.do_create_rollout(
        actor=None, name="bench-delta", model_version=target, base_version=base,
        devices=chosen, waves=[100], offers_per_minute=1_000_000, max_concurrent=count)
    if list(rollout.packages.values_list("id", flat=True)) != [package.pk]:
        raise RuntimeError("the delta rollout did not take the delta package")
    before = monitor.fresh()
    rollout = actions.do_start_rollout(rollout, actor=None)
    log(f"delta rollout {rollout.pk}: package {package.pk}, {package.transfer_size} bytes "
        f"delta for a {package.installed_size}-byte model, {len(chosen)} devices")
    done = (DeploymentState.CONFIRMED, DeploymentState.FAILED, DeploymentState.ROLLED_BACK)
    deployments = Deployment.objects.filter(rollout=rollout)
    # A big fleet's simulator may still be reading the first rollout's last fan-out bytes.
    wait_until(lambda: deployments.filter(state__in=done).count() == len(chosen),
               60 + 2 * count + fleet_size / 50, "the delta rollout", every=0.25)
    time.sleep(1.5)  # late acks
    after = monitor.fresh()
    confirmed = deployments.filter(state=DeploymentState.CONFIRMED).count()
    per_device = ((after[0] - before[0]) + (after[1] - before[1])) / len(chosen)
    log(f"delta rollout done: {confirmed} of {len(chosen)} confirmed, "
        f"{per_device:.0f} broker bytes per device")
    return [
        {"metric": "delta_rollout_bytes_per_device", "value": round(per_device),
         "unit": "bytes", "baseline": round(full_per_device),
         "ratio": round(per_device / full_per_device, 4), "devices": len(chosen),
         "confirmed": confirmed, "delta_package_bytes": package.transfer_size,
         "model_bytes": package.installed_size,
         "note": "broker bytes (both directions) per device: delta rollout vs the full one above"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 devices")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--hardware", default=HARDWARE,
                        help="hardware profile of the simulated devices (default %(default)s)")
    parser.add_argument("--delta-devices", type=int, default=None,
                        help="devices in the delta rollout that follows (default: 50, quick 20)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for the rollout (default: 30 + 0.3 per device)")
    parser.add_argument("--sim-processes", type=int, default=None,
                        help="simulator processes (default: 1 up to 2,000 devices, else 2)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--package-encoding", choices=["auto", "raw"], default="auto",
                        help="auto: the package the rollout builds (needs the C decoder)")
    parser.add_argument("--bulk-enroll", action="store_true", help="enroll in bulk at any size")
    parser.add_argument("--pg-statements", action="store_true",
                        help="count the statements run during the rollout (pg_stat_statements)")
    parser.add_argument("--role", choices=["build-models", "sim"], help=argparse.SUPPRESS)
    parser.add_argument("out", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "build-models":
        return run_build_models(args.out)
    if args.role == "sim":
        return run_sim_process(args.out)
    devices = args.devices or (100 if args.quick else 1000)
    delta_devices = min(devices, args.delta_devices or (20 if args.quick else 50))
    timeout = args.timeout or 30 + 0.3 * devices
    t_total = time.monotonic()

    v1_bytes, v2_bytes, v3_bytes = models()
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-rollout-"))
    broker = bench_broker(workdir, "bench/rollout.py")
    db = BenchDatabase(args.database, workdir, statements=args.pg_statements)
    encoding_note = "built by the rollout (smallest encoding); each device decodes its own " \
                    "copy with the firmware's C transfer decoder"
    if args.package_encoding == "auto" and not build_c_decoder():
        args.package_encoding = "raw"
        encoding_note = "raw: the C transfer decoder could not be built, and the Python one " \
                        "is too slow for thousands of simulated devices on 2 cores"
    elif args.package_encoding == "raw":
        encoding_note = "raw, as asked (--package-encoding raw)"
    worker: subprocess.Popen[bytes] | None = None
    sim: Any = None
    fleet: Any = None
    sim_dir: Path | None = None
    monitor: SysMonitor | None = None
    results: list[dict[str, Any]] = []
    try:
        broker.start()
        db.start()
        setup_django(workdir, broker, db.url)
        log(f"database: {args.database}")

        from device_sdk.mqtt.link import WireTally
        from device_sdk.protocol.ota_messages import DeploymentState
        from device_sdk.simulator import Simulator
        from fleet.broker.access import ServiceRole
        from fleet.broker.dynsec import DynsecAccess
        from fleet.devices.models import Device, HardwareProfile
        from fleet.telemetry.models import WorkerStats
        from ota.choices import Encoding
        from ota.packaging.actions import do_build_package
        from ota.registry.actions import do_create_model, do_upload_version
        from ota.rollouts import actions
        from ota.rollouts.models import Deployment, Rollout, RolloutState

        # -- seed: the model, two versions, v1's package ----------------------------------
        started = time.monotonic()
        model = do_create_model(name="kws", actor=None)
        v1 = do_upload_version(model, version="1.0.0", data=v1_bytes, actor=None)
        v2 = do_upload_version(model, version="2.0.0", data=v2_bytes, actor=None)
        v3 = do_upload_version(model, version="2.0.1", data=v3_bytes, actor=None)
        for mv in (v1, v2, v3):
            if mv.status != "ready":
                raise RuntimeError(f"{mv} is {mv.status}, not ready")
        profile = HardwareProfile.objects.get(name=args.hardware)
        v1_package = do_build_package(v1, profile, actor=None)
        v1_path = workdir / "v1.tflite"
        v1_path.write_bytes(v1_bytes)
        log(f"models {len(v1_bytes)} and {len(v2_bytes)} bytes uploaded and validated, v1 "
            f"package built in {time.monotonic() - started:.1f} s")

        # -- devices ----------------------------------------------------------------------
        server = "http://127.0.0.1:9"  # only for re-enrollment, which this run never needs
        sim_dir = sim_state_dir(workdir)
        config = sim_config(sim_dir, v1_path, args.hardware, v1_package.pk, devices)
        tally = WireTally()
        sim = Simulator(config, tally=tally)
        started = time.monotonic()
        bulk = args.bulk_enroll or devices > BULK_ENROLL_OVER
        enroll(devices, sim, server, v1_package.pk, args.hardware, broker, bulk)
        log(f"{devices} devices enrolled in-process in {time.monotonic() - started:.1f} s"
            f"{' (bulk: broker credentials written to its dynamic-security file)' if bulk else ''}")

        # -- worker -----------------------------------------------------------------------
        identity = ("bench-rollout-worker", secrets.token_urlsafe(16))
        with DynsecAccess(broker.host, broker.port, broker.admin_username,
                          broker.admin_password) as access:
            access.provision_service(*identity, ServiceRole.WORKER)
        worker_env = {k: v for k, v in os.environ.items()
                      if not k.startswith(("MQTT_", "BROKER_"))}
        worker_env.update({
            "MQTT_URL": broker.url, "MQTT_WORKER_USERNAME": identity[0],
            "MQTT_WORKER_PASSWORD": identity[1], "MQTT_WORKER_GROUP": "bench",
            "FLEET_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
            # With FANOUT_ACCESS=grant it grants each offered device its package's fan-out.
            "BROKER_ACCESS": "dynsec", "MQTT_ADMIN_USERNAME": broker.admin_username,
            "MQTT_ADMIN_PASSWORD": broker.admin_password,
        })
        worker = start_worker(workdir, worker_env)
        monitor = SysMonitor(broker)  # before the fleet loads this process

        started = time.monotonic()
        processes = args.sim_processes or (1 if devices <= 2000 else 2)
        if processes > 1:
            fleet = ProcessFleet(sim_dir, v1_path, args.hardware, v1_package.pk, devices,
                                 processes)
        else:
            fleet = LocalFleet(sim, tally)
        fleet.start()
        wait_until(lambda: fleet.connected() == devices, 60 + devices * 0.1,
                   f"{devices} devices connected")
        log(f"{devices} devices connected in {time.monotonic() - started:.1f} s "
            f"({processes} simulator process{'es' if processes > 1 else ''})")
        # A fleet is online before its rollout: wait for the worker to apply every device's
        # first status, or that backlog (10,000 of them at the end of a 10,000-device connect)
        # delays the wave's reports behind it and the figures measure the connect instead.
        from fleet.devices.choices import DeviceState

        started = time.monotonic()
        wait_until(lambda: Device.objects.filter(state=DeviceState.ONLINE).count() == devices,
                   60 + devices * 0.05, "the worker to apply every device's status", every=1.0)
        log(f"the worker applied the devices' statuses {time.monotonic() - started:.1f} s later")

        # -- the rollout ------------------------------------------------------------------
        raw = do_build_package(v2, profile, actor=None, encoding=Encoding.RAW) \
            if args.package_encoding == "raw" else None
        rollout = actions.do_create_rollout(
            actor=None, name="bench", model_version=v2,
            devices=list(Device.objects.filter(hardware_profile=profile)), waves=[100],
            offers_per_minute=1_000_000, max_concurrent=max(devices, 1000),
        )
        package = rollout.packages.get()
        if raw is not None and package.pk != raw.pk:
            raise RuntimeError("the rollout did not take the raw package")
        before = monitor.fresh()
        tally_before = fleet.tally_snapshot()
        meter = CpuMeter({"bench_process": os.getpid(), "worker": worker.pid,
                          "broker": broker.pid, **fleet.pids()})
        meter.start()
        db_cpu = db.cpu_seconds()
        db.reset_statements()
        rollout = actions.do_start_rollout(rollout, actor=None)
        t_start = time.monotonic()
        log(f"rollout {rollout.pk} started: package {package.pk}, "
            f"{package.transfer_size} bytes {Encoding(package.encoding).name.lower()} for a "
            f"{package.installed_size}-byte model, {devices} devices")
        done_states = (DeploymentState.CONFIRMED, DeploymentState.FAILED,
                       DeploymentState.ROLLED_BACK)
        deployments = Deployment.objects.filter(rollout=rollout)
        last_note = [0.0]

        def finished() -> bool:
            count = deployments.filter(state__in=done_states).count()
            if time.monotonic() - last_note[0] > 5:
                last_note[0] = time.monotonic()
                log(f"  {time.monotonic() - t_start:5.1f} s: {count} of {devices} done")
            if count == devices:
                return True
            # A rollout completes at its success threshold: its stragglers then stay where
            # they are for good (their reports are refused), so waiting longer measures nothing.
            return Rollout.objects.filter(pk=rollout.pk, state__in=(
                RolloutState.COMPLETED, RolloutState.ABORTED)).exists()

        timed_out = False
        try:
            # Polling costs this process a query over every deployment: not too often.
            wait_until(finished, timeout, "the rollout", every=max(0.25, devices / 10_000))
        except RuntimeError as exc:
            timed_out = True
            log(str(exc))
        waited = time.monotonic() - t_start
        done_wall = time.time()
        cpu = meter.stop()
        if args.database == "postgresql":
            cpu["postgres"] = round(db.cpu_seconds() - db_cpu, 2)
        statements = db.statement_counts()
        log(f"CPU seconds during the rollout ({waited:.1f} s wall, load average "
            f"{cpu['loadavg']}): " + ", ".join(f"{k} {v}" for k, v in cpu.items()
                                                if k not in ("loadavg", "threads"))
            + f"; threads of this process {cpu['threads']}")
        time.sleep(1.5)  # late acks and the last carousel tick
        after = monitor.fresh()
        tally_after = fleet.tally_snapshot()
        confirmed = deployments.filter(state=DeploymentState.CONFIRMED).count()
        states: dict[str, int] = {}
        for state in deployments.values_list("state", flat=True):
            name = DeploymentState(state).name.lower()
            states[name] = states.get(name, 0) + 1
        rollout.refresh_from_db()
        last = deployments.filter(confirmed_at__isnull=False).order_by("-confirmed_at").first()
        if confirmed == devices and last is not None:
            seconds = (last.confirmed_at - rollout.started_at).total_seconds()
        else:
            seconds = waited
        log(f"rollout done: {states} in {seconds:.1f} s"
            f"{' (TIMED OUT)' if timed_out else ''}")

        # Worker counters: saved every 5 s; take a save made after the rollout was done.
        from datetime import UTC, datetime

        threshold = datetime.fromtimestamp(done_wall + 0.5, tz=UTC)
        stats = wait_until(
            lambda: WorkerStats.objects.filter(worker="bench-rollout",
                                               heartbeat_at__gt=threshold).first(),
            15, "the worker's stats after the rollout")
        fanout = int(stats.counters.get("ota_fanout_bytes", 0))
        unicast = int(stats.counters.get("ota_unicast_bytes", 0))
        size = package.transfer_size
        unicast_cost = size * devices
        through = (after[0] - before[0]) + (after[1] - before[1])
        breakdown = wire_breakdown(tally_before, tally_after, through, unicast_cost,
                                   fanout_leg=fanout_server_bytes(package.pk, fanout,
                                                                  profile.ota_chunk_bytes))
        log("wire bytes by kind (share of payload x devices): " + ", ".join(
            f"{k} {v['share'] * 100:.2f} %" for k, v in breakdown.items()))
        log(f"worker: fan-out {fanout} B, unicast {unicast} B "
            f"({stats.counters.get('ota_chunks_served', 0)} chunk requests answered); broker: "
            f"+{after[0] - before[0]} B received, +{after[1] - before[1]} B sent")

        results = [
            {"metric": "devices_confirmed", "value": confirmed, "unit": "devices",
             "baseline": devices, "ratio": round(confirmed / devices, 4),
             "states": states},
            {"metric": "rollout_seconds", "value": round(seconds, 2), "unit": "s",
             "baseline": None, "ratio": None, "timed_out": timed_out},
            {"metric": "server_egress_ratio", "value": round((fanout + unicast) / unicast_cost, 5),
             "unit": "ratio", "baseline": 1.0,
             "ratio": round((fanout + unicast) / unicast_cost, 5),
             "fanout_bytes": fanout, "unicast_bytes": unicast,
             "per_device_unicast_bytes": unicast_cost},
            {"metric": "wire_overhead", "value": round((through - unicast_cost) / unicast_cost, 4),
             "unit": "ratio", "baseline": 0.0, "ratio": None,
             "broker_bytes": through, "payload_x_devices": unicast_cost,
             "source": "mosquitto $SYS/broker/bytes/{received,sent} deltas",
             "hardware": profile.name, "fanout_chunk_bytes": profile.ota_chunk_bytes,
             "breakdown": breakdown},
            {"metric": "rollout_cpu_seconds", "value": round(sum(
                v for k, v in cpu.items() if k not in ("loadavg", "threads")), 2), "unit": "s",
             "baseline": round(waited, 2), "ratio": None, **cpu,
             "note": "CPU used from the rollout's start until all were done; baseline = wall "
                     "seconds of that span (2 cores: at most twice that)"},
            *([{"metric": "db_statements_per_device", "value": round(
                statements["calls"] / devices, 2), "unit": "statements", "baseline": None,
                "ratio": None, **statements}] if statements else []),
            {"metric": "broker_bytes_received", "value": after[0] - before[0], "unit": "bytes",
             "baseline": None, "ratio": None},
            {"metric": "broker_bytes_sent", "value": after[1] - before[1], "unit": "bytes",
             "baseline": unicast_cost, "ratio": round((after[1] - before[1]) / unicast_cost, 4)},
            {"metric": "package_bytes", "value": size, "unit": "bytes",
             "baseline": package.installed_size,
             "ratio": round(size / package.installed_size, 4)},
            {"metric": "package_encoding", "value": Encoding(package.encoding).name.lower(),
             "unit": None, "baseline": None, "ratio": None,
             "note": encoding_note},
            {"metric": "database", "value": args.database, "unit": None, "baseline": None,
             "ratio": None},
            {"metric": "devices", "value": devices, "unit": "devices", "baseline": None,
             "ratio": None},
        ]
        if hashlib.sha256(v2_bytes).hexdigest() != v2.sha256:
            raise RuntimeError("v2 digest mismatch")
        if confirmed == devices and delta_devices:
            try:
                results += delta_rollout(v2, package.pk, v3, profile, delta_devices, monitor,
                                         through / devices, fleet_size=devices)
            except RuntimeError as exc:  # the figures above stand on their own
                log(f"delta rollout: {exc}")
    finally:
        if monitor is not None:
            monitor.close()
        if fleet is not None:
            try:
                fleet.stop()
            except Exception as exc:  # noqa: BLE001 (keep stopping the rest)
                log(f"simulator stop failed: {exc!r}")
        stop_worker(worker)
        broker.stop()
        db.stop()
        if sim_dir is not None and sim_dir.parent != workdir and \
                not os.environ.get("FLEET_BENCH_KEEP"):
            shutil.rmtree(sim_dir.parent, ignore_errors=True)
    finish(workdir, t_total, results)


if __name__ == "__main__":
    main()
