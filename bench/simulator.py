"""Measure simulator scale: how many devices one process keeps connected, and reporting.

What runs (all started here, all stopped at the end, even on error):

- Mosquitto (fleet.broker.mosquitto.MosquittoInstance: the project's config, dynamic security,
  free loopback ports) plus ``sys_interval 1`` so its $SYS figures come every second;
- a SQLite file database in a temporary FLEET_VAR_DIR, migrated in this process;
- a trained int8 16-32-4 MLP (TensorFlow in a subprocess, cached in the temp folder);
- N devices enrolled in this process, each with its own key pair, device row, broker
  credential (dynsec client, bound to its uid as client id) and broker role ``device-<uid>``;
- the simulator (device_sdk.simulator.Simulator) in a child process of its own, so its CPU
  and memory are its alone: N devices connected over TLS, the first R running inference at
  1/s in TFLM and reporting batches;
- a monitor client (the dynsec admin, plain listener) counting the events that reach the
  broker's subscribers, and reading $SYS/broker/clients/connected.

Enrollment. The real path is ``do_enroll_device`` provisioning the broker over
``$CONTROL/dynamic-security/v1``. In Mosquitto 2.0.11 every createRole and createClient makes
the plugin rewrite its whole JSON file (about 1.6 KB per device), so one enrollment costs time
in proportion to the fleet already enrolled: ~20 ms at 250 devices, ~75 ms at 1,000, and the
bench measures it at N. Enrolling 10,000 that way would take about an hour, so the bench
enrolls ``--real-enroll`` devices through the real path before the bulk (dynsec nearly empty)
and as many after it (dynsec holding N), and the rest in bulk: the same ``do_enroll_device``
(token, key, row, audit, a fresh credential) with the broker step recorded instead of sent,
then written into the plugin's JSON while the broker is stopped, exactly as the plugin stores
what ``DynsecAccess.provision_device`` sends (a client with its PBKDF2-SHA512 password hash
and client id, and its own role with ``device_grants``). The ``enroll_*`` lines say so.

Phases of the simulator child (it speaks JSON lines on stdout, progress on stderr):

1. optional baseline: the same N devices connect over plain TCP (the broker's loopback
   listener), then stop; gives the connect time and CPU without TLS;
2. N devices connect over TLS (the enrolled mqtts:// URL), none inferring yet;
3. idle window: all connected, keepalive only: CPU % and RSS;
4. the first R devices start inferring at 1/s (batches of ``--batch``); after one batch
   period, the steady window: CPU %, RSS, connected devices (minimum over the window).

Figures (one JSON object per line at the end):

- ``simulator_devices_connected``: the simulator's connected devices, minimum over the steady
  window; baseline = devices asked. ``broker_clients_connected``: Mosquitto's own count.
- ``simulator_connect_seconds``: first connect to all connected over TLS; baseline = plain TCP.
- ``simulator_cpu_ms_per_connect`` / ``broker_cpu_ms_per_connect``: CPU per connection over
  TLS; baseline = plain TCP (the TLS handshake's share is the difference).
- ``simulator_cpu_percent``: CPU of the simulator process (all threads, % of one core) in the
  steady window; baseline = the idle window (same devices connected, none inferring).
- ``simulator_rss_mb``: resident memory in the steady window; baseline = before the devices.
- ``events_per_s_delivered``: events whose inference time falls in the steady window and
  that reached the monitor, per second; baseline = R x rate (what the devices should make).
- ``broker_cpu_percent``: Mosquitto's CPU in the steady window; baseline = the idle window.
- ``enroll_ms_per_device_*``: real path with dynsec small / at N; bulk path.

Run: ``.venv/bin/python bench/simulator.py [--quick] [--devices N] [--reporting R]``
(quick: 1,000 devices, 100 reporting; full: 10,000 and 1,000). FLEET_BENCH_KEEP=1 keeps the
temporary folder (broker log, database, device state).
This file is the entry point and the run's phases; the model and the enrollment are in
``bench/simulator_enroll.py``, the simulator child process in ``bench/simulator_child.py``, the
monitor subscriber in ``bench/simulator_monitor.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lab import (  # bench/ is this script's folder
    bench_broker,
    cpu_seconds,
    finish,
    setup_django,
    write_dynsec_devices,
)
from simulator_child import Child, run_simulate
from simulator_enroll import Enroller, log, model_path, run_build_model
from simulator_monitor import Monitor

# -- the run ----------------------------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def figure(metric: str, value: Any, unit: str | None, baseline: Any = None,
           **extra: Any) -> dict[str, Any]:
    ratio = None
    if isinstance(value, int | float) and isinstance(baseline, int | float) and baseline:
        ratio = round(value / baseline, 4)
    return {"metric": metric, "value": value, "unit": unit, "baseline": baseline,
            "ratio": ratio, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 devices, 100 reporting")
    parser.add_argument("--devices", type=int, help="devices connected (default 10,000)")
    parser.add_argument("--reporting", type=int, help="devices inferring (default devices / 10)")
    parser.add_argument("--rate", type=float, default=1.0, help="inferences per second")
    parser.add_argument("--batch", type=int, help="events per batch (quick 5, full 10)")
    parser.add_argument("--window", type=float, help="steady window, s (quick 8, full 60)")
    parser.add_argument("--real-enroll", type=int, help="devices enrolled through the real "
                        "dynsec path before and after the bulk (quick 10, full 5)")
    parser.add_argument("--threads", type=int, help="simulator network threads")
    parser.add_argument("--connectors", type=int, default=4, help="TCP/TLS connector threads")
    parser.add_argument("--connect-rate", type=float, help="devices started per second")
    parser.add_argument("--no-plain-baseline", action="store_true",
                        help="skip the plain-TCP connect baseline")
    parser.add_argument("--ota", action="store_true", help="give every device its OTA slots")
    parser.add_argument("--role", choices=["build-model", "simulate"], help=argparse.SUPPRESS)
    parser.add_argument("arg", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "build-model":
        return run_build_model(args.arg)
    if args.role == "simulate":
        return run_simulate(args.arg)
    devices = args.devices or (1000 if args.quick else 10_000)
    reporting = min(devices, args.reporting if args.reporting is not None else devices // 10)
    window = args.window or (8.0 if args.quick else 60.0)
    args.batch = args.batch or (5 if args.quick else 10)
    real = args.real_enroll if args.real_enroll is not None else (10 if args.quick else 5)
    real = min(real, devices // 2)
    t_total = time.monotonic()

    model = model_path()
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-simulator-"))
    broker = bench_broker(workdir, "bench/simulator.py")
    monitor: Monitor | None = None
    children: list[Child] = []
    results: list[dict[str, Any]] = []
    try:
        broker.start()
        setup_django(workdir, broker)
        from fleet.broker.configured import reset_broker_access

        # -- enrollment: real path, bulk, real path again at full size ---------------------
        enroller = Enroller(workdir / "sim", devices)
        real_small = enroller.enroll(range(real)) if real else 0.0
        log(f"{real} devices through the real path (dynsec nearly empty): "
            f"{1000 * real_small / max(real, 1):.1f} ms each")
        bulk_range = range(real, devices - real)
        bulk_s, recorded = enroller.enroll_bulk(bulk_range)
        reset_broker_access()  # its connection dies with the broker restart below
        broker.stop()
        write_s = write_dynsec_devices(broker.dynsec_file, recorded)
        started = time.monotonic()
        broker.start(timeout=120)
        load_s = time.monotonic() - started
        log(f"{len(bulk_range)} devices in bulk: {bulk_s:.1f} s enrolling, {write_s:.1f} s "
            f"writing the dynsec JSON ({broker.dynsec_file.stat().st_size / 1e6:.1f} MB), broker "
            f"restarted in {load_s:.1f} s")
        real_full = enroller.enroll(range(devices - real, devices)) if real else 0.0
        reset_broker_access()
        log(f"{real} devices through the real path (dynsec holding {devices}): "
            f"{1000 * real_full / max(real, 1):.1f} ms each")

        monitor = Monitor(broker)
        spec = {
            "devices": devices, "reporting": reporting, "model": str(model),
            "state_dir": str(workdir / "sim"), "rate": args.rate, "batch": args.batch,
            "threads": args.threads, "connectors": args.connectors,
            "connect_rate": args.connect_rate, "ota": args.ota, "settle": 2.0,
            "idle_window": min(window, 5.0 if args.quick else 30.0), "window": window,
            "connect_timeout": 120 + devices * 0.05,
        }

        # -- baseline: connect over plain TCP ---------------------------------------------
        plain: dict[str, Any] | None = None
        broker_plain_cpu = None
        if not args.no_plain_baseline:
            log(f"baseline: {devices} devices connect over plain TCP")
            b_cpu = cpu_seconds(broker.pid or 0)
            child = Child({**spec, "broker_url": broker.url, "connect_only": True}, workdir,
                          "plain")
            children.append(child)
            plain = child.expect("connected", spec["connect_timeout"] + 300)
            broker_plain_cpu = cpu_seconds(broker.pid or 0) - b_cpu
            child.expect("stopped", 120)
            child.proc.wait(30)
            log(f"baseline: {plain['connected']} connected in {plain['seconds']:.1f} s")
            time.sleep(2)

        # -- the run over TLS ---------------------------------------------------------------
        log(f"{devices} devices connect over TLS; {reporting} will infer at {args.rate}/s")
        b_cpu = cpu_seconds(broker.pid or 0)
        child = Child({**spec, "broker_url": None, "connect_only": False}, workdir, "tls")
        children.append(child)
        tls = child.expect("connected", spec["connect_timeout"] + 300)
        broker_tls_cpu = cpu_seconds(broker.pid or 0) - b_cpu
        threads = tls["threads"]
        log(f"{tls['connected']} of {devices} connected over TLS in {tls['seconds']:.1f} s "
            f"({tls['cpu_s']:.1f} s CPU in the simulator, {broker_tls_cpu:.1f} s in the broker)")
        b_idle = cpu_seconds(broker.pid or 0)
        idle = child.expect("idle", spec["settle"] + spec["idle_window"] + 60)
        broker_idle_pct = 100 * (cpu_seconds(broker.pid or 0) - b_idle) / idle["seconds"]
        log(f"idle: {idle['connected_min']} connected, simulator {idle['cpu_percent']:.1f} % "
            f"CPU, {idle['rss_mb']:.0f} MB; broker {broker_idle_pct:.1f} % CPU")
        b_steady = [0.0]

        def note_broker() -> None:
            b_steady[0] = cpu_seconds(broker.pid or 0)

        warmup = args.batch / args.rate + spec["settle"]
        timer = threading.Timer(warmup, note_broker)
        timer.start()
        steady = child.expect("steady", warmup + window + 60)
        broker_steady_pct = 100 * (cpu_seconds(broker.pid or 0) - b_steady[0]) / steady["seconds"]
        # Batches close up to one batch period after their last event: wait for them.
        time.sleep(args.batch / args.rate + 3)
        first, last = int(steady["start"]) + 1, int(steady["end"])
        delivered = monitor.events_between(first, last)
        per_s = delivered / max(1, last - first)
        broker_count = monitor.broker_connected(steady["start"], steady["end"])
        log(f"steady: {steady['connected_min']} connected, simulator {steady['cpu_percent']:.1f} "
            f"% CPU, {steady['rss_mb']:.0f} MB, timers up to {steady['lag_max_ms']:.0f} ms late; "
            f"{per_s:.0f} events/s delivered; broker {broker_steady_pct:.1f} % CPU, says "
            f"{broker_count} clients")
        child.tell_stop()
        stopped = child.expect("stopped", 120)
        log(f"stopped in {stopped['seconds']:.1f} s: {stopped['messages']} messages, "
            f"{stopped['acked']} acked, {stopped['pending']} queued, {stopped['dropped']} "
            f"dropped, {stopped['rejected']} refused, {stopped['connects']} connects")

        results = [
            figure("simulator_devices_connected", steady["connected_min"], "devices", devices,
                   reporting=reporting, note="minimum over the steady window"),
            figure("broker_clients_connected", broker_count, "clients", devices,
                   note="Mosquitto $SYS/broker/clients/connected, minimum over the window "
                        "(the monitor client included)"),
            figure("simulator_connect_seconds", round(tls["seconds"], 2), "s",
                   plain and round(plain["seconds"], 2), transport="tls",
                   baseline_transport="plain tcp", connected=tls["connected"],
                   connectors=args.connectors),
            figure("simulator_cpu_ms_per_connect", round(1000 * tls["cpu_s"] / devices, 3), "ms",
                   plain and round(1000 * plain["cpu_s"] / devices, 3),
                   note="simulator CPU from start to all connected (device setup included), "
                        "per device; baseline over plain TCP"),
            figure("broker_cpu_ms_per_connect", round(1000 * broker_tls_cpu / devices, 3), "ms",
                   broker_plain_cpu is not None and round(1000 * broker_plain_cpu / devices, 3)
                   or None, note="Mosquitto CPU while the fleet connects; baseline plain TCP"),
            figure("simulator_cpu_percent", round(steady["cpu_percent"], 1), "% of one core",
                   round(idle["cpu_percent"], 1), devices=devices, reporting=reporting,
                   baseline_note="same devices connected, none inferring"),
            figure("simulator_rss_mb", round(steady["rss_mb"], 1), "MiB",
                   round(tls["rss_start_mb"], 1),
                   kb_per_device=round(1024 * (steady["rss_mb"] - tls["rss_start_mb"]) / devices,
                                       1),
                   baseline_note="the child before any device was built"),
            figure("events_per_s_delivered", round(per_s, 1), "events/s", reporting * args.rate,
                   window_s=last - first, inferences_in_window=steady["inferences"],
                   source="monitor subscriber, events counted by inference second"),
            figure("simulator_timer_lag_p99_ms", _round(steady["lag_p99_ms"]), "ms",
                   _round(idle["lag_p99_ms"]), max_ms=_round(steady["lag_max_ms"]),
                   threads=threads,
                   note="how late a 100 ms probe timer ran on each reactor thread in the steady "
                        "window; baseline the idle window. An inference tick more than its "
                        "period late is skipped"),
            figure("broker_cpu_percent", round(broker_steady_pct, 1), "% of one core",
                   round(broker_idle_pct, 1), baseline_note="idle window (keepalive only)"),
            figure("enroll_ms_per_device_real_small", round(1000 * real_small / max(real, 1), 1),
                   "ms", None, devices=real, note="do_enroll_device + live dynsec, nearly empty"),
            figure("enroll_ms_per_device_real_full", round(1000 * real_full / max(real, 1), 1),
                   "ms", round(1000 * real_small / max(real, 1), 1), devices=real,
                   dynsec_devices=devices,
                   note="do_enroll_device + live dynsec holding every device: each createRole "
                        "and createClient rewrites the plugin's whole JSON"),
            figure("enroll_ms_per_device_bulk",
                   round(1000 * (bulk_s + write_s) / max(len(bulk_range), 1), 2), "ms",
                   round(1000 * real_full / max(real, 1), 1), devices=len(bulk_range),
                   note="do_enroll_device with the broker step recorded, then written into the "
                        "dynsec JSON with the broker stopped; baseline: the real path at N"),
            figure("devices", devices, "devices", None, reporting=reporting,
                   rate_hz=args.rate, batch=args.batch),
        ]
    finally:
        if monitor is not None:
            monitor.close()
        for child in children:
            child.close()
        broker.stop()
    finish(workdir, t_total, results)


if __name__ == "__main__":
    main()
