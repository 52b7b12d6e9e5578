"""The trial a device runs on a newly installed model before it confirms it.

The model must load in TFLM within the device's arena. With a golden-input trial in the manifest
(key 15, :class:`~device_sdk.protocol.manifest.TrialSpec`) it then runs golden inputs 0..n-1
(:mod:`device_sdk.protocol.golden`: derived from the model's SHA-256, the same bytes on every
device and on the server) and compares the top-1 labels and, when given, the digest of the raw
outputs with what the server computed at admission: a model that loads and runs but computes
something else is reverted with TRIAL_OUTPUT_MISMATCH. Without key 15 (older packages, or
models whose input or output is not int8/uint8) the legacy trial runs: a few seeded inputs
must give a well-formed class distribution.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from device_sdk.inference import TflmModel
from device_sdk.protocol.golden import (
    OutputType,
    golden_input,
    label_mismatches,
    outputs_digest,
    top1_label,
)
from device_sdk.protocol.manifest import TrialSpec
from device_sdk.protocol.reasons import Reason

log = logging.getLogger(__name__)
GOLDEN_INPUTS = 4


@dataclass(frozen=True)
class TrialResult:
    """Whether the new model may be confirmed, and if not the reason code to report."""

    passed: bool
    reason: Reason = Reason.OK
    detail: str = ""


def golden_inputs(model: TflmModel, count: int = GOLDEN_INPUTS) -> list[np.ndarray]:
    """Return ``count`` quantized inputs seeded by the model's SHA-256 (the legacy trial's)."""
    seed = int.from_bytes(hashlib.sha256(model.model_bytes).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    lo, hi = model.input_range()
    return [model.quantize(rng.uniform(lo, hi, size=model.input_shape)) for _ in range(count)]


def golden_outputs(model: TflmModel, n: int) -> list[bytes]:
    """Return output tensor 0's raw bytes for golden inputs 0..n-1 (golden.py's rule)."""
    digest = hashlib.sha256(model.model_bytes).digest()
    return [model.invoke_raw(golden_input(digest, i, model.input_bytes)) for i in range(n)]


def run_trial(
    model_bytes: bytes, *, arena_bytes: int, spec: TrialSpec | None = None
) -> TrialResult:
    """Load ``model_bytes`` and judge it (by ``spec``, manifest key 15, when given).

    Never raises for a bad model: MODEL_LOAD_FAILED when TFLM refuses it, TRIAL_FAILED when it
    does not run (or its tensors do not suit the trial), TRIAL_OUTPUT_MISMATCH when it runs but
    its golden outputs differ from ``spec``.
    """
    try:
        model = TflmModel(model_bytes, arena_bytes=arena_bytes)
    except Exception as exc:  # TFLM refuses the model (missing op, arena too small, ...)
        return TrialResult(False, Reason.MODEL_LOAD_FAILED, str(exc)[:200])
    if spec is not None:
        return _golden_trial(model, spec)
    for index, x in enumerate(golden_inputs(model)):
        try:
            probs = model.infer(x).probabilities
        except Exception as exc:
            return TrialResult(False, Reason.TRIAL_FAILED, f"golden input {index}: {exc}"[:200])
        if not np.all(np.isfinite(probs)) or not 0.9 <= float(probs.sum()) <= 1.1:
            return TrialResult(False, Reason.TRIAL_FAILED,
                               f"golden input {index}: output is not a distribution")
    return TrialResult(True)


def _golden_trial(model: TflmModel, spec: TrialSpec) -> TrialResult:
    """Run golden inputs 0..n-1 and compare labels and the outputs digest with ``spec``."""
    if OutputType.from_dtype(model.input_dtype.name) is None:
        return TrialResult(False, Reason.TRIAL_FAILED,
                           f"golden inputs need an int8/uint8 input, not {model.input_dtype}")
    try:
        outputs = golden_outputs(model, spec.n)
    except Exception as exc:
        return TrialResult(False, Reason.TRIAL_FAILED, f"golden inputs: {exc}"[:200])
    if any(not out for out in outputs):
        return TrialResult(False, Reason.TRIAL_FAILED, "empty output tensor")
    labels = [top1_label(out, spec.output_type) for out in outputs]
    wrong = label_mismatches(spec.labels, labels)
    if wrong > spec.max_label_mismatches:
        return TrialResult(False, Reason.TRIAL_OUTPUT_MISMATCH,
                           f"labels {labels} differ from {list(spec.labels)} in {wrong} of "
                           f"{spec.n} inputs (at most {spec.max_label_mismatches} allowed)")
    if spec.outputs_sha256 is not None and outputs_digest(outputs) != spec.outputs_sha256:
        return TrialResult(False, Reason.TRIAL_OUTPUT_MISMATCH,
                           "outputs digest differs from the manifest's")
    return TrialResult(True)
