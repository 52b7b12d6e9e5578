#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Write the firmware's demo / factory model: a small int8 CNN (32x32x1 -> 4 classes).

Usage: demo_model.py OUT.tflite [--seed N]

The model is ``testkit.model_factory.conv_model()`` (CONV_2D, MAX_POOL_2D, MEAN,
FULLY_CONNECTED, SOFTMAX; int8 in and out; seeded, so the same TensorFlow gives the same bytes;
``--seed N`` gives the same network with other weights and a head that follows the sensor's
signal: another real model of the same shapes, the firmware tests' second version),
converted with TensorFlow at build time: nothing binary is committed. Its input is 1,024 samples
in [0, 1], which the Cortex-M images fill from the port's synthetic sensor.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Sensor:
    """The QEMU port's synthetic sensor (ports/qemu-mps2/runner_port.c, ports/posix/runner_posix.c)
    bit for bit: a sine whose period changes with every read of up to 64 samples, plus noise."""

    def __init__(self) -> None:
        self.phase, self.step, self.noise = 0, 2048, 12345

    def read(self, count: int) -> list[int]:
        """Return the next ``count`` samples (-128..127)."""
        out = []
        for _ in range(count):
            self.noise = (self.noise * 1664525 + 1013904223) & 0xFFFFFFFF
            half = self.phase & 0x7FFF
            y = half * (32768 - half) // 2684355
            v = (-y if self.phase & 0x8000 else y) + (self.noise >> 27) - 16
            self.phase = (self.phase + self.step) & 0xFFFF
            out.append(max(-128, min(127, v)))
        self.step = 1400 + (self.step + 97) % 2700
        return out

    def windows(self, n: int, size: int = 1024) -> list[list[int]]:
        """Return the inputs of the next ``n`` inferences (as the TFLM adapter reads them)."""
        out = []
        for _ in range(n):
            samples: list[int] = []
            while len(samples) < size:
                samples += self.read(min(64, size - len(samples)))
            out.append(samples)
        return out


def conv_model_seeded(seed: int) -> bytes:
    """Return conv_model()'s network with the initial weights of ``seed``, its classifier head
    centred and scaled on the sensor's signal (features minus their mean over 300 sensor windows,
    logits of standard deviation 2), so that its top-1 label and score follow the input: events
    tell which model made them. Calibrated on sensor windows too."""
    import numpy as np

    from testkit import model_factory

    tf = model_factory._tf()
    tf.keras.utils.set_random_seed(seed)
    x = (np.array(Sensor().windows(300), dtype=np.float32) + 128) / 255
    x = x.reshape(-1, 32, 32, 1)
    inp = tf.keras.Input((32, 32, 1))
    h = tf.keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = tf.keras.layers.MaxPooling2D()(h)
    h = tf.keras.layers.Conv2D(16, 3, activation="relu")(h)
    features = tf.keras.layers.GlobalAveragePooling2D()(h)
    head = tf.keras.layers.Dense(4, activation="softmax")
    model = tf.keras.Model(inp, head(features))
    f = tf.keras.Model(inp, features).predict(x, verbose=0)
    kernel, _ = head.get_weights()
    gain = 2.0 / float(((f - f.mean(0)) @ kernel).std())
    head.set_weights([kernel * gain, -(f.mean(0) @ kernel) * gain])
    return model_factory.to_int8(model, x[:100])


def main(argv: list[str]) -> int:
    """Convert the model and write it to argv[1]."""
    out = Path(argv[1])
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    from testkit import model_factory

    data = model_factory.conv_model() if seed == 0 else conv_model_seeded(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    print(f"{out}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
