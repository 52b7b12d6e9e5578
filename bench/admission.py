"""Time the admission check of a ~250 KB int8 model against every stock hardware profile.

Run as ``.venv/bin/python bench/admission.py [--quick]``. Builds the model with TensorFlow
(imported here only) and the firmware's probe images (``make -C firmware probes insn-plugin``),
then times ``validate_model`` as the server runs it: inspection, one sandboxed host TFLM probe
with the arena search and the golden inputs, and at the same time the exact arena bisection in
QEMU on every probe board a stock profile maps to (M3 reference, M4 CMSIS-NN; in parallel,
allocate-only runs, one Invoke at the end, counting its instructions), CMSIS-NN's golden
outputs from the M4 probe, and a verdict per profile. Nothing is cached between repetitions.
The baseline is one plain in-process TFLM load + invoke of the same model, measured in the same
run. ``--quick``: fewer repetitions and a smaller representative set, same model. Ends with one
JSON object per figure per line (``admission_seconds_250kb`` first; the arena per board and how
each profile's figure was obtained follow).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fleet.devices.stock_profiles import STOCK_PROFILES
from ota.validation.admission import ProfileSpec, TargetMeasurement, validate_model
from ota.validation.golden import register_outputs_measurer
from ota.validation.targets import QemuOutputsMeasurer

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
PROFILES = [ProfileSpec.from_fields(p) for p in STOCK_PROFILES]
# Measured or nothing: a bench that silently estimated would time the wrong thing.
TARGETS = TargetMeasurement(require=True, cache=False)


def log(message: str) -> None:
    """Print progress for people on stderr; stdout carries only the JSON figures."""
    print(message, file=sys.stderr, flush=True)


def build_model(representative: int) -> bytes:
    """Build and quantize a 96x96 CNN whose int8 weights make it about 250 KB.

    Batch 1, so Flatten is one RESHAPE: every op is one the firmware registers (ops.h).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((96, 96, 1), batch_size=1),  # static shapes: no SHAPE/PACK ops
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

    log("building the probe images (make -C firmware probes insn-plugin)...")
    subprocess.run(["make", "-C", str(FIRMWARE), "probes", "insn-plugin", "-j2"], check=True,
                   stdout=subprocess.DEVNULL)
    register_outputs_measurer("cmsis-nn", QemuOutputsMeasurer())
    log("building the model (TensorFlow)...")
    with contextlib.redirect_stdout(sys.stderr):  # TF prints its export summary on stdout
        model = build_model(representative=10 if args.quick else 100)
    log(f"model: {len(model)} bytes")

    baselines = [plain_load_and_invoke(model) for _ in range(repeats + 1)][1:]  # drop warm-up
    timings, report = [], None
    for i in range(repeats):
        started = time.perf_counter()
        report = validate_model(model, PROFILES, targets=TARGETS)
        timings.append(time.perf_counter() - started)
        log(f"admission {i + 1}/{repeats}: {timings[-1]:.3f} s, "
            f"compatible: {', '.join(report.compatible_profiles)}")  # fmt: skip
    assert report is not None and report.probe.ok, report and report.probe.failure
    probe = report.probe
    for verdict in report.compatibility:
        log(f"  {verdict.profile}: {'fits' if verdict.ok else 'refused'}, arena "
            f"{verdict.arena_required_bytes} B ({verdict.arena_method}"
            f"{': ' + verdict.arena_method_reason if verdict.arena_method_reason else ''})")
        for reason in verdict.reasons:
            log(f"    {reason.code}: {reason.message}")

    admission = statistics.median(timings)
    baseline = statistics.median(baselines)
    total = probe.allocations.total if probe.allocations else None
    figures = [
        figure("admission_seconds_250kb", round(admission, 4), "s", round(baseline, 5)),
        figure("model_bytes", len(model), "B", None),
        figure("min_arena_bytes", probe.arena_bytes or 0, "B", total),  # vs TFLM's own total
        figure("arena_attempts", probe.attempts, "count", None),
    ]
    boards = {}
    for verdict in report.compatibility:
        if verdict.measured is not None:
            boards[verdict.measured.board] = verdict.measured
    for board, m in sorted(boards.items()):
        # The exact minimum on the target vs TFLM's own arena_used_bytes there.
        figures.append({**figure(f"min_arena_bytes_{board}", m.min_arena_bytes, "B",
                                 m.arena_used_bytes), "method": f"measured: {m.core}, {m.kernels}",
                        "qemu_runs": m.qemu_runs, "seconds": m.seconds})
        if m.instructions_per_inference:
            figures.append(figure(f"instructions_per_inference_{board}",
                                  m.instructions_per_inference, "instructions", None))
    methods = {v.profile: v.arena_method for v in report.compatibility}
    figures.append({"metric": "arena_method_per_profile", "value": methods, "unit": None,
                    "baseline": None, "ratio": None})
    for line in figures:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
