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
import os
import random
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from device_sdk.backoff import Backoff
from device_sdk.client import ClientStats, DeviceClient
from device_sdk.identity import DeviceIdentity, EnrollmentError, enroll, ensure_enrolled
from device_sdk.inference import SensorStream, TflmModel, host_capabilities
from device_sdk.link import WireTally
from device_sdk.ota.agent import Faults, OtaAgent
from device_sdk.ota.slots import SlotStore
from device_sdk.ota.trial import TrialResult, run_trial
from device_sdk.ota.updater import OtaUpdater
from device_sdk.outbox import Outbox
from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from device_sdk.protocol.status import Capabilities
from device_sdk.reactor import Reactor, Timer

__all__ = ["SimulatedDevice", "SimulationConfig", "Simulator", "raise_open_file_limit"]

log = logging.getLogger(__name__)
_DEVICES_PER_THREAD = 500
# Python runs one thread at a time: past two reactors, more threads add GIL hand-offs, not
# throughput. With 10,000 devices, 20 reactors let a timer run up to 0.76 s late (p99 0.27 s)
# where 2 kept it within 0.1 s, for more CPU (bench/simulator.py).
_MAX_DEFAULT_THREADS = 2
# Descriptors kept free for everything that is not a device's socket, outbox or download: the
# Python runtime, logging, the model, re-enrollment, slot files while an update is written.
_FD_RESERVE = 256
# A device whose credential the broker refuses enrolls again, at most this often.
_REENROLL_INTERVAL_S = 60.0


@dataclass
class SimulationConfig:
    """What to simulate; the ``simulate`` command's options, one to one."""

    server: str
    token: str
    devices: int
    model_path: Path
    hardware: str
    state_dir: Path = Path("var/simulator")
    rate_hz: float = 1.0  # inferences per second per device
    batch: int = 32  # events per batch
    batch_age_s: float = 30.0  # a batch closes at the latest this long after its first event
    summary_window_s: int | None = None  # send per-window summaries instead of batches
    mix: str | None = None  # initial label mix, e.g. "0.4,0.3,0.2,0.1"; None: uniform
    drift_after_s: float | None = None
    drift_mix: str | None = None
    drift_fraction: float = 1.0  # share of the devices that drift
    package_id: int = 0  # package id of the factory model (0: none)
    duration_s: float | None = None  # None: until stopped
    threads: int | None = None  # reactor threads; None: one per 500 devices, at most 2
    connectors: int = 4  # threads doing TCP/TLS handshakes
    enroll_workers: int = 8
    uid_prefix: str | None = None  # device ids PREFIX-00000...; None: the server derives them
    broker_url: str | None = None  # override the URL enrollment hands out
    arena_bytes: int | None = None
    slot_bytes: int = 1024 * 1024
    latency_scale: float = 1.0
    seed: int = 0
    report_every_s: float = 10.0
    reporting: int | None = None  # devices that run inference (the first N); None: all
    connect_rate: float | None = None  # devices started per second; None: as fast as connectors go
    freeze_gc: bool = True  # move the fleet's long-lived objects out of the collector's sight
    ota: bool = True  # take OTA updates (A/B slots under each device's state dir)
    faults: Faults = field(default_factory=Faults)  # failure injection for rollout tests
    repair_after_s: float = 2.0  # ask for missing package bytes after this long without any
    first_index: int = 0  # devices first_index.. of the state dir (a fleet split over processes)
    reboot_after_s: float = 1.0  # a "crashed" device comes back after this long


class SimulatedDevice:
    """One simulated device: a client, a sensor stream, and an inference timer on its reactor.

    A device that is not ``reporting`` stays connected but never infers (:meth:`start` is a
    no-op): the idle majority of a large simulated fleet.
    """

    def __init__(
        self, index: int, client: DeviceClient, stream: SensorStream, rate_hz: float,
        *, reporting: bool = True,
    ) -> None:
        self.index = index
        self.client = client
        self.stream = stream
        self.agent: OtaAgent | None = None
        self.reporting = reporting
        self.period = 1.0 / rate_hz
        self.inferences = 0
        self._next = 0.0
        self._timer: Timer | None = None
        self._running = False

    def start(self, phase: float) -> None:
        """Start inferring ``phase`` seconds from now, then every period (on the reactor)."""
        if not self.reporting:
            return
        self._running = True
        self._next = time.monotonic() + phase
        self._timer = self.client.reactor.call_later(phase, self._tick)

    def stop(self) -> None:
        """Stop inferring (from any thread)."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()

    def _tick(self) -> None:
        if not self._running:
            return
        now = time.monotonic()
        # Fixed rate, not fixed delay; after a stall skip the missed ticks rather than burst.
        self._next = self._next + self.period if self._next + self.period > now else now + self.period
        self._timer = self.client.reactor.call_later(self._next - now, self._tick)
        self.client.record(self.stream.infer())
        self.inferences += 1


class Simulator:
    """Enroll, connect and run ``config.devices`` simulated devices."""

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
        self._models_lock = threading.Lock()
        self.crashes = 0
        self._drifted = False
        self._started_at = 0.0
        self._file_outboxes = config.devices  # devices 0..N-1 keep their outbox in a file
        self.connect_started_at = 0.0  # monotonic time the first device started connecting
        self._frozen = False  # gc.freeze() done; undone by stop()
        self._came_up: set[str] = set()  # devices connected at least once (for the 2nd freeze)

    # -- setup ----------------------------------------------------------------------------

    def device_dir(self, index: int) -> Path:
        """Return the state directory of device ``index``."""
        return self.config.state_dir / "devices" / f"{index:05d}"

    def enroll_all(self) -> list[tuple[int, DeviceIdentity]]:
        """Enroll every device not enrolled yet (in parallel); reuse the others' identities."""
        cfg = self.config

        def one(index: int) -> tuple[int, DeviceIdentity]:
            uid = f"{cfg.uid_prefix}-{index:05d}" if cfg.uid_prefix else None
            return index, ensure_enrolled(
                cfg.server, cfg.token, state_dir=self.device_dir(index), hardware=cfg.hardware,
                capabilities=self.capabilities, uid=uid,
            )

        started = time.monotonic()
        enrolled: list[tuple[int, DeviceIdentity]] = []
        with ThreadPoolExecutor(cfg.enroll_workers, thread_name_prefix="sim-enroll") as pool:
            first_index = cfg.first_index
            futures = [pool.submit(one, first_index + i) for i in range(cfg.devices)]
            step = max(1, cfg.devices // 10)
            for i, future in enumerate(futures):
                try:
                    enrolled.append(future.result())
                except (EnrollmentError, OSError, ValueError) as exc:
                    self.failed_enrollments.append((first_index + i, str(exc)))
                if (i + 1) % step == 0 and i + 1 < cfg.devices:
                    log.info("enrollment: %d of %d devices done", i + 1, cfg.devices)
        if self.failed_enrollments:
            first = self.failed_enrollments[0][1]
            log.error("%d of %d devices failed to enroll; first error: %s",
                      len(self.failed_enrollments), cfg.devices, first)
            if not enrolled:
                raise EnrollmentError("no_devices", f"no device could enroll: {first}")
        log.info("%d devices enrolled or loaded in %.1f s", len(enrolled),
                 time.monotonic() - started)
        return enrolled

    def start(self) -> None:
        """Enroll, then connect every device and start its inference timer.

        With ``connect_rate`` the devices start at that pace (this call takes devices / rate
        seconds, and returns early if a stop is requested meanwhile).
        """
        cfg = self.config
        fd_limit = raise_open_file_limit()
        enrolled = self.enroll_all()
        self._file_outboxes = self._outbox_files(len(enrolled), fd_limit)
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
        log.info("%d devices (%d reporting) started on %d network threads", len(self.devices),
                 sum(d.reporting for d in self.devices), len(self.reactors))

    def _outbox_files(self, devices: int, fd_limit: int) -> int:
        """Return how many devices may keep their outbox in a file (one descriptor each)."""
        try:
            open_now = len(os.listdir("/proc/self/fd"))
        except OSError:
            open_now = 64
        # Each device holds its socket; an outbox file is a second descriptor. While an OTA
        # download runs, its part file and range journal are two more (device_sdk/ota/updater).
        downloads = 2 * devices if self.config.ota else 0
        room = fd_limit - open_now - _FD_RESERVE - self.config.connectors - devices - downloads
        files = max(0, min(devices, room))
        if files < devices:
            log.warning(
                "open file limit %d: %d devices keep their outbox in a file, %d in memory "
                "(unsent telemetry of those is lost if this process dies); raise the hard "
                "limit (ulimit -Hn) for more", fd_limit, files, devices - files)
        return files

    def _make_device(self, n: int, index: int, identity: DeviceIdentity,
                     rng: random.Random) -> SimulatedDevice:
        """Build one device from its state directory (also after a simulated power cut)."""
        cfg = self.config
        model, package = self.model, cfg.package_id
        store, interrupted = None, None
        if cfg.ota:
            # Not durable, like the outbox: a simulator survives its own crash, not a power
            # cut (the power-cut guarantees are the real store's, tests/device_sdk/ota).
            store = SlotStore(self.device_dir(index) / "slots", durable=False)
            if not (store.dir / "meta.json").exists():
                store.install_factory(self.model.model_bytes, package=cfg.package_id)
            interrupted = store.meta.package if store.meta.trial else None
            store.boot()  # a model left on trial by the "power cut" goes back to the old one
            if store.meta.package != cfg.package_id:
                model, package = self._shared_model(store.read_active()), store.meta.package
        client = DeviceClient(
            identity,
            state_dir=self.device_dir(index),
            capabilities=self.capabilities,
            model=package,
            reactor=self.reactors[n % len(self.reactors)],
            broker_url=cfg.broker_url,
            batch_events=cfg.batch,
            batch_age_s=cfg.batch_age_s,
            summary_window_s=cfg.summary_window_s,
            num_labels=self.model.num_classes,
            durable=False,  # a simulator survives its own crash, not a power cut
            backoff=Backoff(rng=random.Random(rng.random())),
            tally=self.tally,
        )
        client.on_refused = self._on_refused
        client.on_connect = self._on_device_up
        if n >= self._file_outboxes:
            _keep_outbox_in_memory(client)
        stream = SensorStream(model, mix=cfg.mix, seed=cfg.seed * 1_000_003 + index)
        reporting = cfg.reporting is None or n < cfg.reporting
        device = SimulatedDevice(index, client, stream, cfg.rate_hz, reporting=reporting)
        if store is not None:
            self._attach_ota(device, n, identity, store, rng)
            if interrupted is not None:
                device.agent.report_later(interrupted, DeploymentState.ROLLED_BACK,
                                          Reason.TRIAL_INTERRUPTED)
        return device

    def _attach_ota(self, device: SimulatedDevice, n: int, identity: DeviceIdentity,
                    store: SlotStore, rng: random.Random) -> None:
        cfg = self.config
        updater = OtaUpdater(store, hardware=cfg.hardware, slot_bytes=cfg.slot_bytes,
                             arena_bytes=self.capabilities.arena_bytes)
        if not store.meta.trusted_keys:
            updater.trust({k.kid: k.public_key for k in identity.signing_keys})

        def installed(package: int, model: bytes) -> None:
            noise = 4.0 if device.agent is not None and device.agent.degraded else 1.0
            device.stream = SensorStream(self._shared_model(model), mix=device.stream.mix,
                                         seed=rng.randrange(2**31), noise_scale=noise)

        agent = OtaAgent(
            device.client, updater, self._trial, faults=cfg.faults,
            repair_after_s=cfg.repair_after_s, rng=random.Random(rng.random()),
            on_installed=installed, on_crash=lambda: self._crash(device, n, identity),
        )
        device.agent = agent
        updater.resume()

    def _shared_model(self, model_bytes: bytes) -> TflmModel:
        """Return the one interpreter of these model bytes, loading it on first use."""
        import hashlib

        key = hashlib.sha256(model_bytes).hexdigest()
        with self._models_lock:
            if key not in self._models:
                loaded = TflmModel(model_bytes, arena_bytes=self.config.arena_bytes,
                                   latency_scale=self.config.latency_scale)
                loaded.prototypes()
                self._models[key] = loaded
            return self._models[key]

    def _trial(self, model_bytes: bytes) -> TrialResult:
        """Run the OTA trial once per distinct model (the outcome is deterministic)."""
        import hashlib

        key = hashlib.sha256(model_bytes).hexdigest()
        with self._models_lock:
            cached = self._trials.get(key)
        if cached is None:
            cached = run_trial(model_bytes, arena_bytes=self.capabilities.arena_bytes)
            with self._models_lock:
                self._trials[key] = cached
        return cached

    def _crash(self, device: SimulatedDevice, n: int, identity: DeviceIdentity) -> None:
        """Cut a device's power: drop its connection without goodbye, bring it back later."""
        self.crashes += 1
        device.stop()
        device.client.link.stop()
        if device.agent is not None:
            # What a power cut does to open files (nothing unwritten: they are unbuffered).
            device.agent.updater.close()

        def reboot() -> None:
            time.sleep(self.config.reboot_after_s)
            device.client.close(1.0)
            fresh = self._make_device(n, device.index, identity, random.Random())
            self.devices[self.devices.index(device)] = fresh
            fresh.client.start()
            fresh.start(phase=fresh.period)

        self._reenroll_pool.submit(reboot)

    def _on_device_up(self, client: DeviceClient, session_present: bool) -> None:
        """Once every device has connected, freeze again: their connections are long-lived too
        (network thread; gc.freeze is safe from any thread)."""
        if not self._frozen or len(self._came_up) >= len(self.devices):
            return
        self._came_up.add(client.uid)
        if len(self._came_up) == len(self.devices):
            gc.freeze()
            log.info("all %d devices connected once: their objects are frozen for the collector",
                     len(self.devices))

    def _on_refused(self, client: DeviceClient, reason_code: int) -> None:
        """Re-enroll a device the broker refuses (network thread: hand the HTTP to a pool)."""
        index = next(d.index for d in self.devices if d.client is client)
        now = time.monotonic()
        if now - self._reenrolled_at.get(index, -_REENROLL_INTERVAL_S) < _REENROLL_INTERVAL_S:
            return
        self._reenrolled_at[index] = now
        log.warning("%s: credential refused (reason %d): enrolling again", client.uid, reason_code)

        def reenroll() -> None:
            cfg = self.config
            try:
                identity = enroll(cfg.server, cfg.token, state_dir=self.device_dir(index),
                                  hardware=cfg.hardware, capabilities=self.capabilities)
            except (EnrollmentError, OSError) as exc:
                log.error("%s: enrolling again failed: %s", client.uid, exc)
                return
            client.use_identity(identity)

        self._reenroll_pool.submit(reenroll)

    # -- running --------------------------------------------------------------------------

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


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; return the soft limit.

    Each simulated device holds a socket (and usually its outbox file): the common default
    soft limit of 1,024 stops a fleet at a few hundred devices. Raising the hard limit itself
    needs privileges this process may not have (``ulimit -Hn`` in the shell that starts it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open file limit from %d to %d: %s", soft, hard, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _keep_outbox_in_memory(client: DeviceClient) -> None:
    """Give ``client`` an in-memory outbox so it holds no descriptor besides its socket.

    Same class and bounds, SQLite ``:memory:``; an outbox file that still holds messages from
    an earlier run is kept instead, so they are sent.
    """
    on_disk = client.outbox
    if len(on_disk):
        return
    client.outbox = Outbox(":memory:", max_entries=on_disk.max_entries,
                           max_bytes=on_disk.max_bytes, durable=False)
    on_disk.close()
