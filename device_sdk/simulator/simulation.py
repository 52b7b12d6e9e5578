"""Simulate a fleet in one process: many enrolled devices, each a real MQTT client, all running
real TFLM inference on synthetic sensor data.

Every simulated device has its own key pair, enrollment, MQTT credential, TLS connection
(client id = its device id), outbox and sequence file, under ``STATE_DIR/devices/NNNNN/``; a
restart reuses them. Devices share what a real fleet would not need twice: one loaded
interpreter per model (behind its lock), one TLS context, and a few threads.

Threads: ``threads`` reactors (each one thread: selector, timers, inference ticks) serve the
devices round-robin, plus a small pool for TCP/TLS handshakes and one for enrollment. paho's
``loop_start`` would need a thread per device; a reactor drives hundreds of clients with
``loop_read``/``loop_write``/``loop_misc``. The main thread only watches the clock (duration,
drift) and logs progress.

This module holds :class:`Simulator` (start, run loop, drift, stop, fleet figures) and
re-exports the rest of the public surface, split by concern:

* :mod:`device_sdk.simulator.config`: :class:`SimulationConfig`, the ``simulate`` options;
* :mod:`device_sdk.simulator.device`: :class:`SimulatedDevice`, one device's inference timer;
* :mod:`device_sdk.simulator.fleet`: building the fleet (state dirs, enrollment, each device,
  re-enrollment);
* :mod:`device_sdk.simulator.ota`: OTA slots, shared interpreters and trials, simulated power
  cuts;
* :mod:`device_sdk.simulator.descriptors`: the file-descriptor budget
  (:func:`raise_open_file_limit`, in-memory outboxes).

Scale (10,000 connected devices from one process, measured by ``bench/simulator.py``):

* File descriptors: each device holds its TLS socket and, while the budget allows, its outbox's
  SQLite file. :func:`raise_open_file_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard limit
  at start; the devices past what that limit leaves room for keep their outbox in memory (the
  same SQLite outbox, ``:memory:``), the reporting devices first in line for a file, and the log
  says how many. Nothing else holds a descriptor per device (paho's wake-up socket pair is only
  made by its own loops, which the reactor replaces), and the reactor waits with epoll, so
  descriptors above 1024 are fine.
* Connects go through the small connector pool (``connectors`` threads doing TCP + TLS), so at
  most that many handshakes are in flight: the broker's listen backlog (100 in Mosquitto 2.0,
  not configurable) never overflows, whatever the fleet size. ``connect_rate`` paces them
  further when a broker shares its core with the simulator.
* Only ``reporting`` devices (default: all) run inference; the others stay connected and
  idle (keepalive pings only), as most of a real fleet does between events.
* At most two reactor threads by default (the GIL runs one at a time; more only made timers
  late), and the objects of a built (then of a fully connected) fleet are moved out of the
  cyclic collector's sight with ``gc.freeze()``: a full collection walked every device at
  each pass and stalled the whole fleet for up to 0.7 s at 10,000 devices. :meth:`Simulator.stop`
  unfreezes them; ``freeze_gc=False`` leaves the collector alone.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from device_sdk.client import ClientStats
from device_sdk.inference import TflmModel, host_capabilities
from device_sdk.mqtt.link import WireTally
from device_sdk.mqtt.reactor import Reactor
from device_sdk.ota.trial import TrialResult
from device_sdk.protocol.status import Capabilities
from device_sdk.protocol.transfer import TransferDecoder
from device_sdk.simulator.c_transfer import decoder_factory
from device_sdk.simulator.config import SimulationConfig
from device_sdk.simulator.descriptors import (
    _FD_RESERVE,  # noqa: F401 (re-exported: tests size limits by it)
    outbox_file_budget,
    raise_open_file_limit,
)
from device_sdk.simulator.device import SimulatedDevice
from device_sdk.simulator.fleet import FleetBuilder
from device_sdk.simulator.ota import SimulatorOta

__all__ = ["SimulatedDevice", "SimulationConfig", "Simulator", "raise_open_file_limit"]

log = logging.getLogger(__name__)
_DEVICES_PER_THREAD = 500
# Python runs one thread at a time: past two reactors, more threads add GIL hand-offs, not
# throughput. With 10,000 devices, 20 reactors let a timer run up to 0.76 s late (p99 0.27 s)
# where 2 kept it within 0.1 s, for more CPU (bench/simulator.py).
_MAX_DEFAULT_THREADS = 2


class Simulator(FleetBuilder, SimulatorOta):
    """Enroll, connect and run ``config.devices`` simulated devices.

    Building the devices is :class:`~device_sdk.simulator.fleet.FleetBuilder`'s, their OTA and
    simulated power cuts :class:`~device_sdk.simulator.ota.SimulatorOta`'s; this class owns
    the threads and the state both read, and runs the fleet.
    """

    def __init__(self, config: SimulationConfig, *, stop: threading.Event | None = None,
                 tally: WireTally | None = None) -> None:
        """Load the model and prepare the threads; ``stop``, once set, ends :meth:`wait`;
        ``tally`` counts every device's MQTT bytes by kind (bench/rollout.py)."""
        self.config = config
        self.tally = tally
        self.model = TflmModel.from_file(
            config.model_path, arena_bytes=config.arena_bytes, package_id=config.package_id,
            latency_scale=config.latency_scale,
        )
        self.model.prototypes()  # search once, before hundreds of streams need them
        self.capabilities: Capabilities = host_capabilities(self.model, slot_bytes=config.slot_bytes)
        threads = config.threads or min(
            _MAX_DEFAULT_THREADS, max(1, math.ceil(config.devices / _DEVICES_PER_THREAD)))
        self._connector_pool = ThreadPoolExecutor(config.connectors, thread_name_prefix="sim-conn")
        self._reenroll_pool = ThreadPoolExecutor(2, thread_name_prefix="sim-reenroll")
        self._reenrolled_at: dict[int, float] = {}
        self.reactors = [
            Reactor(f"sim-net-{i}", executor=self._connector_pool) for i in range(threads)
        ]
        self.devices: list[SimulatedDevice] = []
        self.failed_enrollments: list[tuple[int, str]] = []
        self._stop = stop or threading.Event()
        self._models: dict[str, TflmModel] = {}
        self._trials: dict[str, TrialResult] = {}
        # Each device decodes its own packages: with the firmware's C decoder when it is built.
        self.transfer_decoder = decoder_factory()
        self.c_decoder = self.transfer_decoder is not TransferDecoder
        self._models_lock = threading.Lock()
        self.crashes = 0
        self._drifted = False
        self._started_at = 0.0
        self._file_outboxes = config.devices  # devices 0..N-1 keep their outbox in a file
        self.connect_started_at = 0.0  # monotonic time the first device started connecting
        self._frozen = False  # gc.freeze() done; undone by stop()
        self._came_up: set[str] = set()  # devices connected at least once (for the 2nd freeze)

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Enroll, then connect every device and start its inference timer.

        With ``connect_rate`` the devices start at that pace (this call takes devices / rate
        seconds, and returns early if a stop is requested meanwhile).
        """
        cfg = self.config
        fd_limit = raise_open_file_limit()
        enrolled = self.enroll_all()
        self._file_outboxes = outbox_file_budget(len(enrolled), fd_limit,
                                                 connectors=cfg.connectors, ota=cfg.ota)
        for reactor in self.reactors:
            reactor.start()
        rng = random.Random(cfg.seed)
        for n, (index, identity) in enumerate(enrolled):
            self.devices.append(self._make_device(n, index, identity, rng))
        if cfg.freeze_gc:
            gc.collect()
            gc.freeze()
            self._frozen = True
        interval = 1.0 / cfg.connect_rate if cfg.connect_rate else 0.0
        self.connect_started_at = time.monotonic()
        for i, device in enumerate(self.devices):
            due = self.connect_started_at + i * interval
            if interval and self._stop.wait(max(0.0, due - time.monotonic())):
                break
            device.client.start()
            # Spread the first inferences over one period so the fleet does not tick in step.
            device.start(phase=rng.uniform(0, device.period))
        self._started_at = time.monotonic()
        log.info("%d devices (%d reporting) started on %d network threads; transfer decoder: %s",
                 len(self.devices), sum(d.reporting for d in self.devices), len(self.reactors),
                 "the firmware's (C)" if self.c_decoder else "Python")

    def run(self) -> ClientStats:
        """Start, run for the configured duration (or until :meth:`request_stop`), stop."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop()
        return self.totals()

    def wait(self) -> None:
        """Block until the duration is over or a stop was requested; apply drift on time."""
        cfg = self.config
        last_report = time.monotonic()
        while not self._stop.is_set():
            elapsed = time.monotonic() - self._started_at
            if cfg.duration_s is not None and elapsed >= cfg.duration_s:
                return
            if cfg.drift_after_s is not None and not self._drifted and elapsed >= cfg.drift_after_s:
                self.drift(cfg.drift_mix, cfg.drift_fraction)
            if time.monotonic() - last_report >= cfg.report_every_s:
                last_report = time.monotonic()
                self.report()
            self._stop.wait(0.2)

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (from any thread or a signal handler)."""
        self._stop.set()

    def drift(self, mix: str | None, fraction: float = 1.0) -> None:
        """Change the label mix of the first ``fraction`` of the devices."""
        self._drifted = True
        count = round(len(self.devices) * fraction)
        for device in self.devices[:count]:
            device.stream.set_mix(mix)
        log.info("drift: %d devices now draw labels from mix %s", count, mix or "uniform")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop inferring, flush every batch, wait for the outboxes to drain, disconnect."""
        deadline = time.monotonic() + timeout
        for device in self.devices:
            device.stop()
        for reactor in self.reactors:
            if reactor.running:
                reactor.sync()  # an inference tick already running finishes before the flush
        for device in self.devices:
            device.client.flush()
        for device in self.devices:
            if device.client.connected:
                device.client.wait_drained(max(0.0, deadline - time.monotonic()))
        for device in self.devices:
            device.client.link.stop()  # all at once: the DISCONNECTs go out in parallel
        for device in self.devices:
            device.client.close(max(0.1, deadline - time.monotonic()))
        for reactor in self.reactors:
            reactor.stop()
            reactor.close()
        self._connector_pool.shutdown(wait=False, cancel_futures=True)
        self._reenroll_pool.shutdown(wait=False, cancel_futures=True)
        if self._frozen:
            gc.unfreeze()  # a stopped fleet is garbage like any other
            self._frozen = False
        self.report()

    # -- figures --------------------------------------------------------------------------

    def totals(self) -> ClientStats:
        """Return the sum of every device's counters."""
        total = ClientStats()
        for device in self.devices:
            s = device.client.snapshot()
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(s, name))
        return total

    def connected(self) -> int:
        """Return how many devices are connected now."""
        return sum(d.client.connected for d in self.devices)

    def report(self) -> None:
        """Log one line of fleet figures for the operator."""
        t = self.totals()
        elapsed = max(1e-9, time.monotonic() - self._started_at)
        inferences = sum(d.inferences for d in self.devices)
        log.info(
            "%d/%d connected | %d inferences (%.0f/s) | %d messages, %d acked, %d queued, "
            "%d dropped, %d refused | %d connects",
            self.connected(), len(self.devices), inferences, inferences / elapsed,
            t.messages, t.acked, t.pending, t.dropped, t.rejected, t.connects,
        )
