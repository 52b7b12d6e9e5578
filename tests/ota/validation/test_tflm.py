"""The TFLM probe: smallest arena, outputs, and surviving what kills the interpreter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ota.validation.tflm import FailureKind, ProbeResult, probe_model
from ota.validation.tflm_probe import ARENA_FLOOR, parse_allocations, parse_missing_ops
from testkit import model_factory

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dense_probe(dense_tflite: bytes) -> ProbeResult:
    """The probe of the MLP with its default random sample."""
    return probe_model(dense_tflite)


def _loads_in_fresh_process(model: Path, arena: int) -> bool:
    """Tell whether TFLM builds the interpreter with ``arena`` bytes (crash counts as no)."""
    code = textwrap.dedent(f"""
        from tflite_micro import runtime
        runtime.Interpreter.from_bytes(open({str(model)!r}, "rb").read(), arena_size={arena})
    """)
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=60)
    return run.returncode == 0


def test_probe_finds_the_smallest_arena_that_works(
    dense_probe: ProbeResult, dense_tflite: bytes, tmp_path: Path
) -> None:
    """The reported arena loads the model and 16 bytes less does not, in fresh processes."""
    assert dense_probe.ok, dense_probe.failure
    arena = dense_probe.arena_bytes
    assert arena is not None and arena % 16 == 0
    assert dense_probe.largest_failing_arena == arena - 16
    model = tmp_path / "dense.tflite"
    model.write_bytes(dense_tflite)
    assert _loads_in_fresh_process(model, arena)
    assert not _loads_in_fresh_process(model, arena - 16)


def test_probe_reports_tflm_allocations(dense_probe: ProbeResult) -> None:
    """TFLM's own figures come back parsed; its total is below what really worked."""
    alloc = dense_probe.allocations
    assert alloc is not None and alloc.total is not None
    assert alloc.total == alloc.head + alloc.tail  # type: ignore[operator]
    assert alloc.total <= dense_probe.arena_bytes  # type: ignore[operator]
    assert alloc.used("TfLiteEvalTensor data") > 0
    assert alloc.used("NodeAndRegistration struct") == 3 * 64  # three ops, 64 bytes each
    assert dense_probe.pointer_bits == 64


def test_probe_without_samples_runs_one_random_input(dense_probe: ProbeResult) -> None:
    """One seeded random int8 input is run, its output kept, and latency measured."""
    assert not dense_probe.samples_given
    assert len(dense_probe.sample_outputs) == 1
    assert np.array(dense_probe.sample_outputs[0][0]).shape == (1, 4)
    assert dense_probe.inputs[0].dtype == "int8" and dense_probe.inputs[0].shape == [1, 16]
    assert dense_probe.invocations >= 10
    assert dense_probe.latency_us_mean is not None and dense_probe.latency_us_mean > 0
    assert json.loads(json.dumps(dense_probe.to_dict()))["ok"] is True


def test_float_samples_are_quantized_like_int8_ones(
    dense_classifier: model_factory.KerasArtifacts, dense_probe: ProbeResult
) -> None:
    """Float samples are quantized with the input's scale; the outputs equal int8 samples'."""
    x = dense_classifier.x[:5]
    scale = dense_probe.inputs[0].scales[0]
    zero = dense_probe.inputs[0].zero_points[0]
    q = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)

    from_float = probe_model(dense_classifier.tflite, samples=x)
    from_int8 = probe_model(dense_classifier.tflite, samples={"x": q})

    assert from_float.samples_given and len(from_float.sample_outputs) == 5
    assert from_float.sample_outputs == from_int8.sample_outputs
    predicted = [int(np.argmax(o[0])) for o in from_float.sample_outputs]
    assert predicted == dense_classifier.y[:5].tolist()


def test_samples_from_an_npz_file(conv_tflite: bytes, tmp_path: Path) -> None:
    """A .npz path with ``x`` works, and one unbatched sample is accepted."""
    path = tmp_path / "samples.npz"
    np.savez(path, x=np.zeros((32, 32, 1), np.float32))
    result = probe_model(conv_tflite, samples=path)
    assert result.ok, result.failure
    assert len(result.sample_outputs) == 1


def test_samples_of_the_wrong_shape_are_refused(conv_tflite: bytes) -> None:
    """Bad samples fail the probe with a reason, but the arena is still measured."""
    result = probe_model(conv_tflite, samples=np.zeros((2, 16), np.float32))
    assert result.failure is not None and result.failure.kind == FailureKind.BAD_SAMPLES
    assert "(2, 16)" in result.failure.message
    assert result.arena_bytes is not None


def test_missing_builtin_op_is_named(topk_tflite: bytes) -> None:
    """TFLM's "Didn't find op" line becomes the missing op's name."""
    result = probe_model(topk_tflite)
    assert result.failure is not None
    assert result.failure.kind == FailureKind.MISSING_OPS
    assert result.failure.missing_ops == ["TOPK_V2"]
    assert result.failure.message == "TFLM has no kernel for TOPK_V2"
    assert result.arena_bytes is None


def test_missing_custom_op_is_named(dense_tflite: bytes) -> None:
    """For a custom op TFLM only says CUSTOM; the probe names it from the model."""
    model = model_factory.with_custom_op(dense_tflite, "SOFTMAX", "MyFancyOp")
    result = probe_model(model)
    assert result.failure is not None and result.failure.missing_ops == ["MyFancyOp"]


def test_tiny_arena_kills_the_child_not_the_parent(
    dense_tflite: bytes, dense_probe: ProbeResult, tmp_path: Path
) -> None:
    """256 bytes segfaults TFLM; probe_model relaunches and still finds the same minimum."""
    model = tmp_path / "dense.tflite"
    model.write_bytes(dense_tflite)
    child = subprocess.run(
        [sys.executable, "-m", "ota.validation.tflm_probe", "--model", str(model),
         "--log", str(tmp_path / "log"), "--start-arena", "256"],
        check=False, capture_output=True, cwd=PROJECT_ROOT, timeout=60,
    )  # fmt: skip
    assert child.returncode == -signal.SIGSEGV
    assert json.loads(child.stdout.splitlines()[-1]) == {"event": "try", "arena": 256}

    result = probe_model(dense_tflite, start_arena=256)
    assert result.ok, result.failure
    assert result.launches >= 2
    assert result.arena_bytes == dense_probe.arena_bytes


def test_garbage_fails_cleanly() -> None:
    """Bytes that are not a model give a load failure, not an exception or a hang."""
    result = probe_model(b"definitely not a tflite model")
    assert result.failure is not None and result.failure.kind == FailureKind.LOAD_FAILED
    assert "bad_identifier" in result.failure.message
    assert result.launches == 1


def test_timeout_is_reported(big_arena_tflite: bytes) -> None:
    """A probe that overruns its time is killed and reported as a timeout."""
    result = probe_model(big_arena_tflite, timeout_s=0.05)
    assert result.failure is not None and result.failure.kind == FailureKind.TIMEOUT
    assert "0.05 s" in result.failure.message


def test_floor_is_above_the_crash_zone() -> None:
    """The search never goes below the floor, well above where TFLM crashes (~450 B)."""
    assert ARENA_FLOOR >= 2 * 464


def test_parsers_read_tflm_output() -> None:
    """The stderr parsers understand TFLM's exact wording."""
    text = (
        "[RecordingMicroAllocator] Arena allocation total 1696 bytes\n"
        "[RecordingMicroAllocator] Arena allocation head 48 bytes\n"
        "[RecordingMicroAllocator] Arena allocation tail 1648 bytes\n"
        "[RecordingMicroAllocator] 'TfLiteEvalTensor data' used 144 bytes with alignment "
        "overhead (requested 144 bytes for 6 allocations)\n"
    )
    figures = parse_allocations(text)
    assert (figures["total"], figures["head"], figures["tail"]) == (1696, 48, 1648)
    assert figures["records"] == [
        {
            "name": "TfLiteEvalTensor data",
            "used": 144,
            "requested": 144,
            "count": 6,
            "unit": "allocations",
        }
    ]
    missing = "Didn't find op for builtin opcode 'TOPK_V2'\nFailed to get registration from op"
    assert parse_missing_ops(missing) == ["TOPK_V2"]
