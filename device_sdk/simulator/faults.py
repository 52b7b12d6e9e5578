"""Failure injection for the simulated fleet: what rollout tests need devices to get wrong.

:class:`Faults` holds a probability per update for each kind of failure; :class:`FaultyOtaAgent`
is the production :class:`~device_sdk.ota.agent.OtaAgent` with its hooks overridden to act them
out. The production agent has no simulator branch; like the firmware's power-cut simulation in
its posix port, the faults live here.

* ``crash_download``: a power cut at a random byte of the download; ``on_crash`` (the
  simulator's :meth:`~device_sdk.simulator.ota.SimulatorOta._crash`) drops the device and
  reboots it from its state directory.
* ``corrupt_chunk``: one received byte flipped, so the package's digest check must catch it.
* ``fail_trial``: the trial of the new model says no (``TRIAL_FAILED``, "injected fault").
* ``degrade_scores``: confirm, then score worse (:attr:`FaultyOtaAgent.degraded`) so that
  health gates have something to see.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from device_sdk.client import DeviceClient
from device_sdk.ota.agent import OtaAgent, Trial
from device_sdk.ota.trial import TrialResult
from device_sdk.ota.updater import OtaUpdater
from device_sdk.protocol.manifest import Manifest
from device_sdk.protocol.reasons import Reason

__all__ = ["Faults", "FaultyOtaAgent"]


@dataclass
class Faults:
    """Failure injection for the simulator (each a probability per update)."""

    crash_download: float = 0.0  # "power cut" half-way through the download
    corrupt_chunk: float = 0.0  # flip a byte of one received chunk
    fail_trial: float = 0.0  # the trial says no
    degrade_scores: float = 0.0  # confirm, but report worse scores afterwards (health gates)


class FaultyOtaAgent(OtaAgent):
    """An :class:`OtaAgent` that injects :class:`Faults`; :attr:`faults` may change mid-run.

    ``rng`` draws every fault (one generator per device keeps a seeded fleet reproducible);
    ``on_crash`` is called, on the network thread, when a download reaches its power-cut point.
    """

    def __init__(self, client: DeviceClient, updater: OtaUpdater, trial: Trial, *,
                 faults: Faults | None = None, rng: random.Random | None = None,
                 on_crash: Callable[[], None] | None = None, **options: object) -> None:
        super().__init__(client, updater, trial, **options)  # type: ignore[arg-type]
        self.faults = faults or Faults()
        self.rng = rng or random.Random()
        self.on_crash = on_crash
        self.degraded = False  # the last confirmed model scores worse (degrade_scores)
        self._corrupt_at: int | None = None  # transfer offset of the byte to flip
        self._crash_at: int | None = None  # bytes received when the power goes

    def offer_accepted(self, manifest: Manifest) -> None:
        """Draw this update's corrupted byte and power-cut point, if any."""
        size = manifest.transfer_size
        self._corrupt_at = (self.rng.randrange(size)
                            if self.rng.random() < self.faults.corrupt_chunk else None)
        self._crash_at = (self.rng.randrange(size)
                          if self.rng.random() < self.faults.crash_download else None)

    def chunk_received(self, offset: int, data: bytes) -> bytes:
        """Flip the drawn byte when this chunk holds it (once per update)."""
        at = self._corrupt_at
        if at is not None and offset <= at < offset + len(data):
            flipped = bytearray(data)
            flipped[at - offset] ^= 0x40
            self._corrupt_at = None
            return bytes(flipped)
        return data

    def download_advanced(self, received: int) -> bool:
        """Cut the power once the download passed its drawn point (False: the device is gone)."""
        if self._crash_at is not None and received >= self._crash_at and self.on_crash is not None:
            self._crash_at = None
            self.on_crash()  # the simulator throws this device away mid-download
            return False
        return True

    def trial_judged(self, result: TrialResult) -> TrialResult:
        """Fail a passing trial with ``fail_trial``; else decide whether scores degrade."""
        if result.passed and self.rng.random() < self.faults.fail_trial:
            result = TrialResult(False, Reason.TRIAL_FAILED, "injected fault")
        if result.passed:
            self.degraded = self.rng.random() < self.faults.degrade_scores
        return result
