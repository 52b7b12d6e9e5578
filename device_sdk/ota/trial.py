"""The trial a device runs on a newly installed model before it confirms it.

The model must load in TFLM within the device's arena, run on golden inputs and give a
well-formed class distribution. The golden inputs are derived from the model's digest, so the
server (or a test) can reproduce exactly what every device ran.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from device_sdk.inference import TflmModel
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
    """Return ``count`` quantized inputs seeded by the model's SHA-256 (reproducible)."""
    seed = int.from_bytes(hashlib.sha256(model.model_bytes).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    lo, hi = model.input_range()
    return [model.quantize(rng.uniform(lo, hi, size=model.input_shape)) for _ in range(count)]


def run_trial(model_bytes: bytes, *, arena_bytes: int) -> TrialResult:
    """Load ``model_bytes`` and run the golden inputs; never raises for a bad model."""
    try:
        model = TflmModel(model_bytes, arena_bytes=arena_bytes)
    except Exception as exc:  # TFLM refuses the model (missing op, arena too small, ...)
        return TrialResult(False, Reason.MODEL_LOAD_FAILED, str(exc)[:200])
    for index, x in enumerate(golden_inputs(model)):
        try:
            probs = model.infer(x).probabilities
        except Exception as exc:
            return TrialResult(False, Reason.TRIAL_FAILED, f"golden input {index}: {exc}"[:200])
        if not np.all(np.isfinite(probs)) or not 0.9 <= float(probs.sum()) <= 1.1:
            return TrialResult(False, Reason.TRIAL_FAILED,
                               f"golden input {index}: output is not a distribution")
    return TrialResult(True)
