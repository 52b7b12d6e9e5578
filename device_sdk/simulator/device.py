"""One simulated device of the fleet simulator: :class:`SimulatedDevice`, a client, a sensor
stream and the fixed-rate inference timer on its reactor (re-exported by
:mod:`device_sdk.simulator`)."""

from __future__ import annotations

import time

from device_sdk.client import DeviceClient
from device_sdk.inference import SensorStream
from device_sdk.mqtt.reactor import Timer
from device_sdk.simulator.faults import FaultyOtaAgent

__all__ = ["SimulatedDevice"]

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
        self.agent: FaultyOtaAgent | None = None
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

