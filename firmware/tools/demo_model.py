#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Write the firmware's demo / factory model: a small int8 CNN (32x32x1 -> 4 classes).

Usage: demo_model.py OUT.tflite

The model is ``testkit.model_factory.conv_model()`` (CONV_2D, MAX_POOL_2D, MEAN,
FULLY_CONNECTED, SOFTMAX; int8 in and out; seeded, so the same TensorFlow gives the same bytes),
converted with TensorFlow at build time: nothing binary is committed. Its input is 1,024 samples
in [0, 1], which the Cortex-M images fill from the port's synthetic sensor.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    """Convert the model and write it to argv[1]."""
    out = Path(argv[1])
    sys.path.insert(0, str(ROOT))  # testkit/, when the project is not installed
    from testkit import model_factory

    data = model_factory.conv_model()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    print(f"{out}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
