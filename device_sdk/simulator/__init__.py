"""The fleet simulator: many enrolled devices in one process, each a real MQTT client running
real TFLM inference, with the failure injection rollout tests need.

* :mod:`~device_sdk.simulator.simulation`: :class:`Simulator` (start, run loop, drift, stop)
* :mod:`~device_sdk.simulator.config`: :class:`SimulationConfig`, the ``simulate`` options
* :mod:`~device_sdk.simulator.fleet`: building devices (enrollment, state dirs)
* :mod:`~device_sdk.simulator.device`: one simulated device
* :mod:`~device_sdk.simulator.ota`: each device's slots and OTA agent, power cuts
* :mod:`~device_sdk.simulator.faults`: :class:`Faults` and the fault-injecting OTA agent
* :mod:`~device_sdk.simulator.descriptors`: the open-file budget

Nothing outside this package (and the ``simulate`` command) imports it: production code
carries no simulator-only branches.
"""

from device_sdk.simulator.faults import Faults, FaultyOtaAgent
from device_sdk.simulator.simulation import (
    SimulatedDevice,
    SimulationConfig,
    Simulator,
    raise_open_file_limit,
)

__all__ = [
    "Faults",
    "FaultyOtaAgent",
    "SimulatedDevice",
    "SimulationConfig",
    "Simulator",
    "raise_open_file_limit",
]
