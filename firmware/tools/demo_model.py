#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Write the firmware's demo / factory model: a small int8 CNN (32x32x1 -> 4 classes).

Usage: demo_model.py OUT.tflite [--seed N]

The model is ``testkit.model_factory.conv_model()`` (CONV_2D, MAX_POOL_2D, MEAN,
FULLY_CONNECTED, SOFTMAX; int8 in and out; seeded, so the same TensorFlow gives the same bytes;
``--seed N`` gives the same network with other initial weights: another real model of the
same shapes, the firmware tests' second version),
converted with TensorFlow at build time: nothing binary is committed. Its input is 1,024 samples
in [0, 1], which the Cortex-M images fill from the port's synthetic sensor.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def conv_model_seeded(seed: int) -> bytes:
    """Return conv_model()'s network with the initial weights of ``seed``."""
    import numpy as np
    from testkit import model_factory

    tf = model_factory._tf()
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([
        tf.keras.Input((32, 32, 1)),
        tf.keras.layers.Conv2D(8, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(4, activation="softmax"),
    ])  # fmt: skip
    rep = np.random.default_rng(seed + 1).random((50, 32, 32, 1), dtype=np.float32)
    return model_factory.to_int8(model, rep)


def main(argv: list[str]) -> int:
    """Convert the model and write it to argv[1]."""
    out = Path(argv[1])
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    sys.path.insert(0, str(ROOT))
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
