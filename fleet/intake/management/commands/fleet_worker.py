"""Run a fleet worker: MQTT ingest, background jobs; several may run side by side."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections
from django.utils import timezone

from device_sdk.mqtt import paho_speedup
from fleet.intake.assemble import build_worker
from fleet.intake.drain import Drainer
from fleet.intake.stats import save_worker_stats
from fleet.intake.worker import MqttWorker
from ota.rollouts.delivery import OtaDelivery

log = logging.getLogger("fleet.worker")
STATS_EVERY_S = 5.0
JOBS_EVERY_S = 2.0
CONTROLLER_EVERY_S = 1.0
CAROUSEL_EVERY_S = 0.2
PARTITIONS_EVERY_S = 3600.0


class Command(BaseCommand):
    help = "Consume device messages (shared subscriptions) and run background jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", default=f"worker-{socket.gethostname()}",
                            help="stable client id: a restarted worker resumes its session")
        parser.add_argument("--no-jobs", action="store_true", help="no conversion jobs")
        parser.add_argument("--no-rollouts", action="store_true", help="no rollout controller")
        parser.add_argument("--retire", action="store_true",
                            help="take the worker NAME out of service for good: store what its "
                                 "broker session still holds, then end the session")
        parser.add_argument("--no-paho-speedup", action="store_true",
                            help="decode MQTT packets with paho's own code (for comparisons)")

    def handle(self, *args: Any, **opts: Any) -> None:
        name = opts["name"]
        if not opts["no_paho_speedup"]:
            # paho's per-message decoding was most of the receive thread (paho_speedup.py).
            paho_speedup.install()
        worker, consumers, delivery = build_worker(name)
        if opts["retire"]:  # by hand; live workers do it on their own (fleet/intake/drain.py)
            handled = worker.retire()
            self.stdout.write(f"worker {name} retired ({handled} queued messages stored)\n")
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if not opts["no_jobs"]:
            threading.Thread(target=_jobs_loop, args=(name, stop), daemon=True,
                             name="jobs").start()
        if not opts["no_rollouts"]:
            threading.Thread(target=_rollouts_loop, args=(name, worker, delivery, stop),
                             daemon=True, name="rollouts").start()
        threading.Thread(target=_partitions_loop, args=(stop,), daemon=True,
                         name="partitions").start()
        started = timezone.now()
        worker.start()
        log.info("worker %s started (ingest, OTA%s%s)", name,
                 "" if opts["no_jobs"] else ", jobs", "" if opts["no_rollouts"] else ", rollouts")
        # Heartbeats well inside WORKER_DEAD_AFTER_S, so that peers never take this one for dead.
        stats_every_s = min(STATS_EVERY_S, settings.WORKER_DEAD_AFTER_S / 4)
        drainer = Drainer(name, consumers.counters)
        last_stats = 0.0
        while not stop.is_set():
            worker.run_once(timeout_s=0.5)
            if time.monotonic() - last_stats > stats_every_s:
                last_stats = time.monotonic()
                try:
                    save_worker_stats(name, started, consumers.counters)
                    drainer.tick()  # a dead peer's broker session, drained in a thread
                except Exception:
                    log.exception("could not save worker stats or look for dead peers")
        worker.stop()
        drainer.join(timeout_s=30.0)
        log.info("worker %s stopped", name)


def _partitions_loop(stop: threading.Event) -> None:
    """Make the raw event table's day partitions ahead (PostgreSQL; a no-op elsewhere)."""
    from fleet.telemetry.partitions import ensure_partitions

    while True:
        try:
            ensure_partitions()
        except Exception:
            log.exception("could not make telemetry partitions ahead")
        finally:
            close_old_connections()
        if stop.wait(PARTITIONS_EVERY_S):
            return


def _jobs_loop(name: str, stop: threading.Event) -> None:
    """Conversion jobs and stuck validations, off the ingest thread (they take seconds)."""
    from ota.jobs.conversion import revalidate_stuck_versions, run_pending_jobs
    from ota.jobs.revalidation import run_pending_revalidations

    while not stop.wait(JOBS_EVERY_S):
        try:
            close_old_connections()
            run_pending_jobs(name)
            revalidate_stuck_versions()
            run_pending_revalidations(name)
        except Exception:
            log.exception("background jobs failed; retrying")


def _rollouts_loop(name: str, worker: MqttWorker, delivery: OtaDelivery,
                   stop: threading.Event) -> None:
    """Controller ticks each second; the package carousel several times a second."""
    from ota.rollouts.controller import tick

    last_tick = 0.0
    while not stop.wait(CAROUSEL_EVERY_S):
        try:
            close_old_connections()
            if time.monotonic() - last_tick >= CONTROLLER_EVERY_S:
                last_tick = time.monotonic()
                tick(name, worker)
            delivery.carousel_tick()
        except Exception:
            log.exception("rollout controller failed; retrying")
