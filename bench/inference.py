"""Instructions per inference on the emulated Cortex-M boards, and the arena probe's speed.

QEMU models no cycle counter, so the figure is executed guest instructions, counted by a small
TCG plugin (``firmware/tools/qemu_insn.c``, built here with the host's gcc) between two calls of
the probe image's marker around ``Invoke()``. The model is the firmware's int8 demo CNN
(``firmware/tools/demo_model.py``: 32x32x1 -> CONV_2D 8, MAX_POOL_2D, CONV_2D 16, MEAN,
FULLY_CONNECTED, SOFTMAX), the same bytes on every board:

- ``inference_instructions_reference``: mps2-an385 (Cortex-M3), TFLM reference kernels;
- ``inference_instructions_cmsis_nn``: mps2-an386 (Cortex-M4 with DSP), CMSIS-NN kernels;
  baseline: the reference-kernel figure above, ratio = value / baseline;
- ``inference_instructions_cmsis_nn_m55``: mps3-an547 (Cortex-M55, MVE), CMSIS-NN, when its
  probe is built (``make -C firmware BOARD=mps3-an547 probe``), same baseline.

Then the probe's speed (``ota.validation.qemu_probe``): ``arena_probe_seconds`` for the demo
model over the built boards in parallel (bisection to the byte, one Invoke at the end). Without
``--quick`` also for a ~250 KB int8 MLP (``arena_probe_seconds_250kb``), which TensorFlow
converts first (a few seconds, not counted).

One JSON object per line on stdout (bench/README convention); extra keys name the board.
``--quick`` stays well under a minute once the firmware's TFLM objects are built (the first
build compiles TFLM's core and kernels for two cores: several minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from ota.validation import qemu_probe  # noqa: E402

FIRMWARE = ROOT / "firmware"
PLUGIN = FIRMWARE / "build" / "qemu_insn.so"
DEMO_MODEL = FIRMWARE / "build" / "demo_model.tflite"
_COUNT = re.compile(r"qemu_insn: total=(\d+) marked=(\d+) pairs=(\d+)")


def make(*targets: str) -> None:
    """Run make in firmware/; exit with its output when it fails."""
    done = subprocess.run(["make", "-C", str(FIRMWARE), *targets, "-j2"], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"make {' '.join(targets)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def marker_address(elf: Path) -> int:
    """Return the address of tml_probe_marker in a probe image."""
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] == "tml_probe_marker":
            return int(fields[0], 16)
    raise RuntimeError(f"no tml_probe_marker in {elf}")


def instructions_per_invoke(model: Path, board: str, invokes: int = 1) -> int:
    """Run the probe with ``invokes`` Invokes under the plugin; return instructions per Invoke."""
    spec = qemu_probe.BOARDS[board]
    args = f"arg=model={model},arg=arena=262144,arg=invoke={invokes},arg=watchdog=600000"
    command = ["qemu-system-arm", "-M", board, "-nographic", "-monitor", "none", "-icount",
               "shift=0", "-kernel", str(spec.elf),
               "-plugin", f"{PLUGIN},marker={marker_address(spec.elf):#x}",
               "-semihosting-config", f"enable=on,target=native,{args}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    found = _COUNT.search(done.stderr)
    if done.returncode != 0 or not found or int(found.group(3)) != invokes:
        raise RuntimeError(f"{board}: probe failed (rc {done.returncode}):\n{done.stderr[-2000:]}")
    return round(int(found.group(2)) / invokes)


def mlp_250kb() -> bytes:
    """Return a ~250 KB int8 MLP (256-480-256-64-4), converted with TensorFlow."""
    import numpy as np

    from testkit import model_factory

    tf = model_factory._tf()
    model = tf.keras.Sequential([
        tf.keras.Input((256,)),
        tf.keras.layers.Dense(480, activation="relu"),
        tf.keras.layers.Dense(256, activation="relu"),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(4, activation="softmax"),
    ])  # fmt: skip
    rep = np.random.default_rng(4).random((20, 256), dtype=np.float32)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # the converter prints on stdout, which carries the JSON lines
    try:
        return model_factory.to_int8(model, rep)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def emit(metric: str, value: float, unit: str, **extra: object) -> None:
    """Print one figure as a JSON line."""
    print(json.dumps({"metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def main() -> int:
    """Build what is needed, measure, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the demo model only (< 1 min)")
    args = parser.parse_args()
    make("demo-model", "insn-plugin", "probes")

    reference = instructions_per_invoke(DEMO_MODEL, "mps2-an385")
    emit("inference_instructions_reference", reference, "instructions", board="mps2-an385",
         cpu="cortex-m3", kernels="reference", model="demo_model.tflite (int8 CNN 32x32x1)")
    cmsis = instructions_per_invoke(DEMO_MODEL, "mps2-an386")
    emit("inference_instructions_cmsis_nn", cmsis, "instructions", baseline=reference,
         ratio=round(cmsis / reference, 4), board="mps2-an386", cpu="cortex-m4",
         kernels="cmsis-nn", baseline_board="mps2-an385 (cortex-m3, reference kernels)",
         model="demo_model.tflite (int8 CNN 32x32x1)")

    if qemu_probe.BOARDS["mps3-an547"].elf.exists():  # built apart: make BOARD=mps3-an547 probe
        m55 = instructions_per_invoke(DEMO_MODEL, "mps3-an547")
        emit("inference_instructions_cmsis_nn_m55", m55, "instructions", baseline=reference,
             ratio=round(m55 / reference, 4), board="mps3-an547", cpu="cortex-m55",
             kernels="cmsis-nn", baseline_board="mps2-an385 (cortex-m3, reference kernels)",
             model="demo_model.tflite (int8 CNN 32x32x1)")

    models = {"arena_probe_seconds": DEMO_MODEL.read_bytes()}
    if not args.quick:
        models["arena_probe_seconds_250kb"] = mlp_250kb()
    for metric, model in models.items():
        started = time.monotonic()
        results = qemu_probe.measure_boards(model)
        elapsed = time.monotonic() - started
        failed = {b: r.failure for b, r in results.items() if r.min_arena_bytes is None}
        if failed:
            raise RuntimeError(f"probe failed: {failed}")
        emit(metric, round(elapsed, 3), "s", model_bytes=len(model),
             boards={b: {"min_arena_bytes": r.min_arena_bytes,
                         "arena_used_bytes": r.arena_used_bytes, "qemu_runs": r.runs,
                         "seconds": round(r.seconds, 3)} for b, r in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
