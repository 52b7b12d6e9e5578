"""What the host TFLM (the tflite-micro wheel) computes for a model on the inputs the firmware's
synthetic sensor gives: the reference a device's events are checked against."""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import numpy as np

from tests.firmware.firmware_kit import FIRMWARE


def _load_sensor() -> Any:
    """The port's synthetic sensor in Python (firmware/tools/demo_model.py: ``Sensor``)."""
    spec = importlib.util.spec_from_file_location("demo_model", FIRMWARE / "tools" / "demo_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Sensor


class HostOutputs:
    """What the host TFLM (the tflite-micro wheel) computes for a model on the sensor's inputs.

    Inference k of the device (from reset, whatever model runs) reads the sensor in 64-sample
    calls and quantizes with float32 arithmetic as ``tflm_adapter.cc``'s ``fill_input`` does;
    the event is output 0's first maximum and its value + 128.
    """

    inputs: ClassVar[list[np.ndarray]] = []
    sensor: ClassVar[Any] = None

    def __init__(self, model: bytes) -> None:
        from tflite_micro import runtime

        self.interp = runtime.Interpreter.from_bytes(model, arena_size=256 * 1024)
        detail = self.interp.get_input_details(0)
        self.shape = tuple(int(v) for v in detail["shape"])
        q = detail["quantization_parameters"]
        self.scale, self.zero = np.float32(q["scales"][0]), np.float32(q["zero_points"][0])
        self.outputs: list[tuple[int, int]] = []

    def _input(self, k: int) -> np.ndarray:
        if HostOutputs.sensor is None:
            HostOutputs.sensor = _load_sensor()()
        while len(HostOutputs.inputs) <= k:  # shared: the sensor does not depend on the model
            samples = HostOutputs.sensor.windows(1, int(np.prod(self.shape)))[0]
            HostOutputs.inputs.append(np.array(samples, dtype=np.int32))
        real = (HostOutputs.inputs[k] + 128).astype(np.float32) / np.float32(255.0)
        q = real / self.scale + self.zero
        v = np.trunc(q + np.where(q < 0, np.float32(-0.5), np.float32(0.5))).astype(np.int32)
        return np.clip(v, -128, 127).astype(np.int8).reshape(self.shape)

    def output(self, k: int) -> tuple[int, int]:
        while len(self.outputs) <= k:
            self.interp.set_input(self._input(len(self.outputs)), 0)
            self.interp.invoke()
            out = self.interp.get_output(0).astype(np.int32).ravel() + 128
            self.outputs.append((int(np.argmax(out)), int(out.max())))
        return self.outputs[k]

    def find_run(self, events: list[tuple[int, int]], first: int = 0, limit: int = 3000) -> int:
        """Return the first inference index >= ``first`` where ``events`` is a contiguous run
        of outputs."""
        for start in range(first, limit):
            if all(self.output(start + i) == e for i, e in enumerate(events)):
                return start
        raise AssertionError(f"events {events[:12]}... are no run of the host's outputs "
                             f"{self.outputs[:12]}...")
