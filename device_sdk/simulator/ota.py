"""OTA and failure injection for the simulated fleet: each device's A/B slots and OTA agent,
one shared interpreter and one trial outcome per distinct model, and the simulated power cut
(``Faults.crash_download``, acted out by :class:`~device_sdk.simulator.faults.FaultyOtaAgent`)
that drops a device mid-download and reboots it from its state dir.

:class:`SimulatorOta` is a mixin of :class:`device_sdk.simulator.Simulator`, which owns the
state it reads (config, capabilities, devices, model caches, pools).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from device_sdk.client.identity import DeviceIdentity
from device_sdk.inference import SensorStream, TflmModel
from device_sdk.ota.slots import SlotStore
from device_sdk.ota.trial import TrialResult, run_trial
from device_sdk.ota.updater import DecoderFactory, OtaUpdater
from device_sdk.protocol.manifest import TrialSpec
from device_sdk.protocol.status import Capabilities
from device_sdk.simulator.config import SimulationConfig
from device_sdk.simulator.device import SimulatedDevice
from device_sdk.simulator.faults import FaultyOtaAgent

__all__ = ["SimulatorOta"]


class SimulatorOta:
    """Give devices OTA updates, share interpreters and trials, cut power (Simulator mixin)."""

    # Set by Simulator.__init__.
    config: SimulationConfig
    capabilities: Capabilities
    devices: list[SimulatedDevice]
    crashes: int
    _models: dict[str, TflmModel]
    _trials: dict[str, TrialResult]
    _models_lock: threading.Lock
    _reenroll_pool: ThreadPoolExecutor
    transfer_decoder: DecoderFactory  # the firmware's C decoder when built (c_transfer.py)

    if TYPE_CHECKING:  # device_sdk.simulator.fleet.FleetBuilder
        def _make_device(self, n: int, index: int, identity: DeviceIdentity,
                         rng: random.Random) -> SimulatedDevice: ...

    def _attach_ota(self, device: SimulatedDevice, n: int, identity: DeviceIdentity,
                    store: SlotStore, rng: random.Random) -> None:
        cfg = self.config
        updater = OtaUpdater(store, hardware=cfg.hardware, slot_bytes=cfg.slot_bytes,
                             arena_bytes=self.capabilities.arena_bytes,
                             decoder=self.transfer_decoder)
        if not store.meta.trusted_keys:
            updater.trust({k.kid: k.public_key for k in identity.signing_keys})

        def installed(package: int, model: bytes) -> None:
            noise = 4.0 if device.agent is not None and device.agent.degraded else 1.0
            device.stream = SensorStream(self._shared_model(model), mix=device.stream.mix,
                                         seed=rng.randrange(2**31), noise_scale=noise)

        agent = FaultyOtaAgent(
            device.client, updater, self._trial, faults=cfg.faults,
            repair_after_s=cfg.repair_after_s, rng=random.Random(rng.random()),
            on_installed=installed, on_crash=lambda: self._crash(device, n, identity),
        )
        device.agent = agent
        agent.resume()

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

    def _trial(self, model_bytes: bytes, spec: TrialSpec | None = None) -> TrialResult:
        """Run the OTA trial once per distinct model and key 15 (the outcome is deterministic)."""
        import hashlib

        key = hashlib.sha256(model_bytes).hexdigest() + repr(spec)
        with self._models_lock:
            cached = self._trials.get(key)
        if cached is None:
            cached = run_trial(model_bytes, arena_bytes=self.capabilities.arena_bytes, spec=spec)
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
