"""Time the admission check of a ~250 KB int8 model against four hardware profiles.

Run as ``.venv/bin/python bench/admission.py [--quick]``. Builds the model with TensorFlow
(imported here only), then times ``validate_model`` (inspection, one sandboxed TFLM probe with
the arena search, four verdicts). The baseline is one plain in-process TFLM load + invoke of
the same model, measured in the same run. Ends with one JSON object per figure per line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from ota.validation.admission import ProfileSpec, validate_model

OPS = [
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "SHAPE",
    "STRIDED_SLICE", "PACK", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "MEAN",
]  # fmt: skip
PROFILES = [
    ProfileSpec("cortex-m0-32k", 32 * 1024, 128 * 1024, 32, ["FULLY_CONNECTED", "SOFTMAX"]),
    ProfileSpec("cortex-m4-128k", 128 * 1024, 512 * 1024, 32, OPS),
    ProfileSpec("cortex-m7-512k", 512 * 1024, 2048 * 1024, 32, OPS),
    ProfileSpec("linux-host", 4096 * 1024, 8192 * 1024, 64, OPS),
]


def log(message: str) -> None:
    """Print progress for people on stderr; stdout carries only the JSON figures."""
    print(message, file=sys.stderr, flush=True)


def build_model(representative: int) -> bytes:
    """Build and quantize a 96x96 CNN whose int8 weights make it about 250 KB."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((96, 96, 1)),
        tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
        tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
        tf.keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        tf.keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(52, activation="relu"),
        tf.keras.layers.Dense(4, activation="softmax"),
    ])  # fmt: skip
    rng = np.random.default_rng(0)

    def samples() -> Any:
        for _ in range(representative):
            yield [rng.random((1, 96, 96, 1), dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def plain_load_and_invoke(model: bytes) -> float:
    """Time one in-process TFLM load (generous arena) and one invoke: the baseline."""
    from tflite_micro import runtime

    started = time.perf_counter()
    interp = runtime.Interpreter.from_bytes(model, arena_size=1 << 20)
    detail = interp.get_input_details(0)
    interp.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
    interp.invoke()
    return time.perf_counter() - started


def figure(metric: str, value: float, unit: str, baseline: float | None) -> dict[str, Any]:
    """Return one output line's object."""
    ratio = value / baseline if baseline else None
    return {"metric": metric, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


def main() -> int:
    """Build the model, time admission and the baseline, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, same model")
    args = parser.parse_args()
    repeats = 3 if args.quick else 10

    log("building the model (TensorFlow)...")
    with contextlib.redirect_stdout(sys.stderr):  # TF prints its export summary on stdout
        model = build_model(representative=10 if args.quick else 100)
    log(f"model: {len(model)} bytes")

    baselines = [plain_load_and_invoke(model) for _ in range(repeats + 1)][1:]  # drop warm-up
    timings, report = [], None
    for i in range(repeats):
        started = time.perf_counter()
        report = validate_model(model, PROFILES)
        timings.append(time.perf_counter() - started)
        log(f"admission {i + 1}/{repeats}: {timings[-1]:.3f} s, "
            f"compatible: {', '.join(report.compatible_profiles)}")  # fmt: skip
    assert report is not None and report.probe.ok, report and report.probe.failure
    probe = report.probe
    for verdict in report.compatibility:
        for reason in verdict.reasons:
            log(f"  {verdict.profile}: {reason.code}: {reason.message}")

    admission = statistics.median(timings)
    baseline = statistics.median(baselines)
    total = probe.allocations.total if probe.allocations else None
    figures = [
        figure("admission_seconds_250kb", round(admission, 4), "s", round(baseline, 5)),
        figure("model_bytes", len(model), "B", None),
        figure("min_arena_bytes", probe.arena_bytes or 0, "B", total),  # vs TFLM's own total
        figure("arena_attempts", probe.attempts, "count", None),
    ]
    for line in figures:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
