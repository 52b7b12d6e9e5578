"""What a device's golden-input trial must see, per hardware profile (manifest key 15).

At admission the TFLM probe child runs golden inputs 0..n-1 (``tflm_probe.run_golden``) in the
host tflite-micro wheel, whose reference kernels compute bit for bit what TFLM's reference
kernels compute on a Cortex-M (PLATFORM-NOTES). From that, per profile:

- kernel set ``reference``: the host's labels and outputs digest, no label may differ;
- another kernel set (``cmsis-nn``, ``esp-nn``), whose optimized kernels may round
  differently: the outputs measured with that kernel set when a measurement is available
  (labels and digest from it, no label may differ), else the host's labels only, with no
  digest and ``UNMEASURED_LABEL_TOLERANCE`` labels allowed to differ;
- a model the rule does not apply to (not int8/uint8, several inputs): nothing, so the package
  has no key 15 and the device runs the legacy trial.

The measurement seam is :func:`measure_outputs_on_target`: given the model, a kernel set and
n, it returns output tensor 0's raw bytes for golden inputs 0..n-1 as the target computes them,
or None. Nothing fills it yet; a QEMU-backed measurement (``ota/validation/qemu_probe.py``)
registers itself with :func:`register_outputs_measurer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from device_sdk.protocol.golden import OutputType, outputs_digest, top1_label
from device_sdk.protocol.limits import MAX_TRIAL_INPUTS
from device_sdk.protocol.manifest import TrialSpec

__all__ = [
    "REFERENCE_KERNELS",
    "UNMEASURED_LABEL_TOLERANCE",
    "OutputsMeasurer",
    "TrialExpectation",
    "measure_outputs_on_target",
    "register_outputs_measurer",
    "trial_expectation",
    "trial_spec_for",
]

log = logging.getLogger(__name__)

REFERENCE_KERNELS = "reference"
# Labels allowed to differ from the host's on a kernel set nobody measured: optimized kernels
# round some intermediate results differently, which may flip a near tie.
UNMEASURED_LABEL_TOLERANCE = 1

# (model bytes, kernel set, n) -> output tensor 0's raw bytes for golden inputs 0..n-1 on the
# target with that kernel set, or None when it cannot measure.
OutputsMeasurer = Callable[[bytes, str, int], "list[bytes] | None"]
_measurers: dict[str, OutputsMeasurer] = {}


def register_outputs_measurer(kernel_set: str, measurer: OutputsMeasurer | None) -> None:
    """Make :func:`measure_outputs_on_target` use ``measurer`` for ``kernel_set`` (None: drop)."""
    if measurer is None:
        _measurers.pop(kernel_set, None)
    else:
        _measurers[kernel_set] = measurer


def measure_outputs_on_target(model_bytes: bytes, kernel_set: str, n: int) -> list[bytes] | None:
    """Return the raw outputs of golden inputs 0..n-1 computed with ``kernel_set`` on its target.

    The seam for a target measurement (e.g. QEMU running the firmware's TFLM build with
    CMSIS-NN): the golden inputs are ``device_sdk.protocol.golden.golden_input(sha256(model),
    i, input_bytes)``; the answer is one bytes object per input, output tensor 0's raw data.
    None (the default, nothing registered) means unmeasured. A failing measurer counts as
    unmeasured, so admission never fails because of it.
    """
    measurer = _measurers.get(kernel_set)
    if measurer is None:
        return None
    try:
        outputs = measurer(model_bytes, kernel_set, n)
    except Exception:
        log.exception("measuring golden outputs with %s failed", kernel_set)
        return None
    if outputs is not None and (len(outputs) != n or not all(outputs)):
        log.warning("measurer for %s gave %d outputs for %d inputs", kernel_set, len(outputs), n)
        return None
    return outputs


@dataclass(frozen=True)
class TrialExpectation:
    """Key 15 for one profile, and where its figures come from (stored in the report)."""

    kernel_set: str
    labels: list[int]
    outputs_sha256: str | None  # hex; None: not checked by the device
    max_label_mismatches: int
    output_type: int  # golden.OutputType
    source: str  # "host-reference", "measured", or "host-labels-only"

    def spec(self) -> TrialSpec:
        """Return the manifest's key 15."""
        digest = bytes.fromhex(self.outputs_sha256) if self.outputs_sha256 else None
        return TrialSpec(tuple(self.labels), self.max_label_mismatches, digest,
                         OutputType(self.output_type))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def trial_expectation(
    golden: Mapping[str, Any] | None,
    kernel_set: str,
    *,
    measured: list[bytes] | None = None,
) -> TrialExpectation | None:
    """Return what a device with ``kernel_set`` must see, from the probe's golden run.

    ``measured``: the target's outputs for the same inputs (see measure_outputs_on_target).
    None when the golden rule does not apply to the model.
    """
    if not golden or not golden.get("applicable"):
        return None
    output_type = OutputType(golden["output_type"])
    labels = [int(v) for v in golden["labels"]][:MAX_TRIAL_INPUTS]
    if kernel_set == REFERENCE_KERNELS:
        return TrialExpectation(kernel_set, labels, golden["outputs_sha256"], 0,
                                int(output_type), "host-reference")
    if measured is not None and len(measured) == len(labels):
        return TrialExpectation(kernel_set, [top1_label(o, output_type) for o in measured],
                                outputs_digest(measured).hex(), 0, int(output_type), "measured")
    return TrialExpectation(kernel_set, labels, None,
                            min(UNMEASURED_LABEL_TOLERANCE, len(labels)), int(output_type),
                            "host-labels-only")


def trial_spec_for(validation: Mapping[str, Any] | None, profile_name: str) -> TrialSpec | None:
    """Return key 15 for a profile from a stored validation report (None: legacy trial)."""
    entry = ((validation or {}).get("trial") or {}).get(profile_name)
    if not entry:
        return None
    return TrialExpectation(**entry).spec()
