"""The arena probe: a model's exact minimum arena per core and kernel set, measured in QEMU.

``ota.validation.qemu_probe`` bisects with a fresh QEMU process per size; the result must be
minimal (one byte less fails, the size itself allocates and runs an Invoke) on the Cortex-M3
with reference kernels and the Cortex-M4 with CMSIS-NN, and golden inputs must give the
outputs the board's firmware image computes.

In CI (``CI=true``) a missing toolchain or QEMU fails these tests instead of skipping them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ota.validation import qemu_probe
from ota.validation.qemu_probe import ProbeCode
from tests.firmware.firmware_kit import FIRMWARE, make, require

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def demo_model() -> bytes:
    """The firmware's int8 demo CNN (built with TensorFlow), with the probe images built."""
    require("make", "arm-none-eabi-gcc", "qemu-system-arm")
    built = make("demo-model", "probes", "-j2")
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    return (FIRMWARE / "build" / "demo_model.tflite").read_bytes()


@pytest.mark.parametrize("board", ["mps2-an385", "mps2-an386"])
def test_bisection_finds_the_exact_minimum_arena(demo_model: bytes, board: str,
                                                 tmp_path: Path) -> None:
    """The size found runs AllocateTensors and Invoke; one byte less does not allocate."""
    result = qemu_probe.measure_min_arena(demo_model, board)
    assert result.failure is None and result.min_arena_bytes is not None, result
    assert result.arena_used_bytes is not None
    assert result.arena_used_bytes <= result.min_arena_bytes < result.arena_used_bytes + 1024
    model = tmp_path / "m.tflite"
    model.write_bytes(demo_model)
    at_min = qemu_probe.run_probe(model, board, result.min_arena_bytes, invoke=1)
    below = qemu_probe.run_probe(model, board, result.min_arena_bytes - 1, invoke=1)
    assert at_min.ok, at_min.log
    assert not below.ok and below.code in (ProbeCode.ALLOCATE, ProbeCode.TIMEOUT,
                                           ProbeCode.FAULT), below
    print(f"\n{board}: min arena {result.min_arena_bytes} B (arena_used_bytes "
          f"{result.arena_used_bytes}), {result.runs} QEMU runs in {result.seconds:.2f} s")


def test_boards_are_measured_in_parallel_and_fast(demo_model: bytes) -> None:
    """Both boards in one call, in parallel, within a few seconds."""
    started = time.monotonic()
    results = qemu_probe.measure_boards(demo_model)
    elapsed = time.monotonic() - started
    assert {"mps2-an385", "mps2-an386"} <= set(results)  # and mps3-an547 when its probe is built
    assert all(r.min_arena_bytes for r in results.values()), results
    assert elapsed < 10, elapsed


def test_a_model_with_an_op_the_firmware_lacks_is_named(demo_model: bytes) -> None:
    """A model using an op outside ops.h fails with TFLM's message naming the op."""
    from testkit import model_factory

    flat = model_factory.with_custom_op(demo_model, "SOFTMAX", "MY_SOFTMAX")
    result = qemu_probe.measure_min_arena(flat, "mps2-an385")
    assert result.min_arena_bytes is None and result.failure
    assert "MY_SOFTMAX" in result.failure or "registration" in result.failure, result.failure


@pytest.mark.parametrize("board", ["mps2-an385", "mps2-an386"])
def test_golden_inputs_give_the_boards_outputs(demo_model: bytes, board: str) -> None:
    """N raw input tensors in, N raw output tensors out, deterministic, int8 softmax-shaped."""
    rng = np.random.default_rng(7)
    inputs = rng.integers(-128, 128, size=(3, 1024), dtype=np.int8).tobytes()
    outputs = qemu_probe.run_golden(demo_model, board, inputs, 65536)
    assert len(outputs) == 3 * 4
    again = qemu_probe.run_golden(demo_model, board, inputs, 65536)
    assert outputs == again
    probs = (np.frombuffer(outputs, dtype=np.int8).reshape(3, 4).astype(int) + 128).sum(axis=1)
    assert all(abs(int(p) - 256) <= 8 for p in probs), probs  # softmax: sums to ~1
