"""Which emulated board measures a hardware profile, and the QEMU-backed golden outputs.

A profile's arena figure is exact only when it is measured on a build of TFLM for its core with
its kernel set (``qemu_probe``). The firmware builds its probe image for three boards:

==============  ==========  =========  ===========================================================
board           core        kernels    measures profiles with
==============  ==========  =========  ===========================================================
mps2-an385      Cortex-M3   reference  reference kernels on any Cortex-M (portable C: the same
                                       code, 32-bit structs and op data on M0..M7 and M33)
mps2-an386      Cortex-M4   cmsis-nn   CMSIS-NN on Cortex-M4 and M7 (both take CMSIS-NN's DSP
                                       paths, so its scratch buffers and per-op data are M4's)
mps3-an547      Cortex-M55  cmsis-nn   CMSIS-NN on Cortex-M55 (MVE paths: more scratch)
==============  ==========  =========  ===========================================================

Anything else (ESP32-S3 with ESP-NN, a Cortex-M33 with CMSIS-NN, whose DSP extension is
optional) has no board here: its figure is estimated, and the report says so.

The core comes from a profile's ``mcu`` text (``"STM32F746NG (Cortex-M7, 216 MHz)"`` ->
``cortex-m7``): :func:`core_of`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from ota.validation import qemu_probe

__all__ = ["QemuOutputsMeasurer", "core_of", "probe_board_for"]

log = logging.getLogger(__name__)

_CORTEX_M = re.compile(r"cortex[- ]?m(\d+)", re.IGNORECASE)

REFERENCE_CORES = frozenset({"cortex-m0", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m23",
                             "cortex-m33"})
_BOARDS: dict[tuple[str, str], str] = {
    **{(core, "reference"): "mps2-an385" for core in REFERENCE_CORES},
    ("cortex-m4", "cmsis-nn"): "mps2-an386",
    ("cortex-m7", "cmsis-nn"): "mps2-an386",
    ("cortex-m55", "cmsis-nn"): "mps3-an547",
}


def core_of(mcu: str) -> str:
    """Return the Cortex-M core named in an MCU description (``cortex-m4``), or ``""``."""
    found = _CORTEX_M.search(mcu or "")
    return f"cortex-m{found.group(1)}" if found else ""


def probe_board_for(core: str, kernel_set: str) -> str | None:
    """Return the probe board whose build measures ``core`` with ``kernel_set`` (None: none)."""
    return _BOARDS.get((core.lower(), kernel_set))


def method_for(board: str) -> str:
    """Return how a figure measured on ``board`` was obtained: ``measured: cortex-m4, cmsis-nn``."""
    spec = qemu_probe.BOARDS[board]
    return f"measured: {spec.cpu}, {spec.kernels}"


class QemuOutputsMeasurer:
    """Golden outputs computed by a kernel set's own TFLM build, in QEMU (the seam of golden.py).

    Registered for ``cmsis-nn`` (``golden.register_outputs_measurer``) by the server
    (``ota.apps``) and the admission bench: the M4 probe runs golden inputs 0..n-1 through
    CMSIS-NN and returns output tensor 0 per input, so CMSIS-NN profiles get exact labels and an
    outputs digest in manifest key 15. Raises when QEMU or the probe image is missing (the seam
    then counts the kernel set as unmeasured and logs why); None when the model does not run
    on the board (admission reports that as the profile's probe failure).
    """

    def __init__(self, board: str = "mps2-an386", probe_dir: Path | None = None) -> None:
        """Measure on ``board`` with the probe images of ``probe_dir`` (None: the default)."""
        self.board = board
        self.probe_dir = probe_dir

    def __call__(self, model: bytes, kernel_set: str, n: int) -> list[bytes] | None:
        """Return output tensor 0's raw bytes for golden inputs 0..n-1."""
        from device_sdk.protocol.golden import golden_input
        from ota.validation.inspect import inspect_model

        why = qemu_probe.unavailable(self.board, self.probe_dir)
        if why:
            raise RuntimeError(f"cannot measure {kernel_set} outputs: {why}")
        inspection = inspect_model(model)
        in_bytes, out_bytes = inspection.inputs[0].bytes, inspection.outputs[0].bytes
        if not in_bytes or not out_bytes or n <= 0:
            return None
        digest = hashlib.sha256(model).digest()
        inputs = b"".join(golden_input(digest, i, in_bytes) for i in range(n))
        # The probe's pool holds the model, the arena, then the inputs and the outputs.
        pool = qemu_probe.BOARDS[self.board].pool_bytes
        arena = (pool - _align16(len(model)) - _align16(len(inputs)) - n * out_bytes - 64) & ~15
        try:
            raw = qemu_probe.run_golden(model, self.board, inputs, arena,
                                        probe_dir=self.probe_dir)
        except RuntimeError as failed:  # the model does not run there (e.g. an op missing)
            log.info("no %s golden outputs: %s", kernel_set, failed)
            return None
        if len(raw) != n * out_bytes:
            raise RuntimeError(f"probe gave {len(raw)} output bytes for {n} x {out_bytes}")
        return [raw[i * out_bytes:(i + 1) * out_bytes] for i in range(n)]


def _align16(n: int) -> int:
    return -(-n // 16) * 16
