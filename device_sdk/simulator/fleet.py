"""Building the simulated fleet: each device's state directory, enrollment (in parallel, or
reusing a stored identity), the device itself (client, sensor stream, outbox, OTA slots), and
its re-enrollment when the broker refuses its credential.

:class:`FleetBuilder` is a mixin of :class:`device_sdk.simulator.Simulator`, which owns the
state it reads (config, model, reactors, devices, pools).
"""

from __future__ import annotations

import gc
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from device_sdk.client import DeviceClient
from device_sdk.client.identity import DeviceIdentity, EnrollmentError, enroll, ensure_enrolled
from device_sdk.inference import SensorStream, TflmModel
from device_sdk.mqtt.backoff import Backoff
from device_sdk.mqtt.link import WireTally
from device_sdk.mqtt.reactor import Reactor
from device_sdk.ota.slots import SlotStore
from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from device_sdk.protocol.status import Capabilities
from device_sdk.simulator.config import SimulationConfig
from device_sdk.simulator.descriptors import keep_outbox_in_memory
from device_sdk.simulator.device import SimulatedDevice

__all__ = ["FleetBuilder"]

log = logging.getLogger("device_sdk.simulator")  # the simulator's logger, as before the split
# A device whose credential the broker refuses enrolls again, at most this often.
_REENROLL_INTERVAL_S = 60.0


class FleetBuilder:
    """Enroll the devices and build each one from its state directory (Simulator mixin)."""

    # Set by Simulator.__init__.
    config: SimulationConfig
    tally: WireTally | None
    model: TflmModel
    capabilities: Capabilities
    reactors: list[Reactor]
    devices: list[SimulatedDevice]
    failed_enrollments: list[tuple[int, str]]
    _reenroll_pool: ThreadPoolExecutor
    _reenrolled_at: dict[int, float]
    _file_outboxes: int
    _frozen: bool
    _came_up: set[str]

    if TYPE_CHECKING:  # device_sdk.simulator.ota.SimulatorOta
        def _shared_model(self, model_bytes: bytes) -> TflmModel: ...

        def _attach_ota(self, device: SimulatedDevice, n: int, identity: DeviceIdentity,
                        store: SlotStore, rng: random.Random) -> None: ...

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
            # Run (and tag events with) what the active slot holds, not the --model file.
            active = store.read_active()
            package = store.meta.package
            if active != self.model.model_bytes:
                model = self._shared_model(active)
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
            keep_outbox_in_memory(client)
        stream = SensorStream(model, mix=cfg.mix, seed=cfg.seed * 1_000_003 + index)
        reporting = cfg.reporting is None or n < cfg.reporting
        device = SimulatedDevice(index, client, stream, cfg.rate_hz, reporting=reporting)
        if store is not None:
            self._attach_ota(device, n, identity, store, rng)
            if interrupted is not None:
                device.agent.report_later(interrupted, DeploymentState.ROLLED_BACK,
                                          Reason.TRIAL_INTERRUPTED)
        return device

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
