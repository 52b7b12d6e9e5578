"""Golden inputs and the trial's comparison rule, shared by the server, the SDK and the firmware.

A model's trial (manifest key 15, see :mod:`device_sdk.protocol.manifest`) runs ``n`` golden
inputs through the newly installed model and compares what comes out with what the server
computed at admission. The rule, implemented identically in ``firmware/src/golden.c``:

- **Input** ``i`` (``i = 0..n-1``) for input tensor 0 is the concatenation of
  ``SHA-256(model_sha256 || b"golden" || u32le(i) || u32le(block))`` for ``block = 0, 1, 2...``,
  truncated to the input tensor's byte length. ``model_sha256`` is manifest key 6, the digest
  of the installed model. The bytes are the tensor's raw data: for an int8 input each byte is
  a signed value, for uint8 an unsigned one.
- **Label** of an output: index of the first maximum of output tensor 0, its bytes compared as
  int8 (signed) or uint8 (unsigned), per :class:`OutputType`.
- **Outputs digest**: SHA-256 over output tensor 0's raw bytes for inputs 0..n-1, concatenated
  in order.

Golden trials apply to models whose input 0 and output 0 are int8 or uint8 (the server's
conversion makes int8 models). For other types (float32, int16...) random bytes are not
meaningful inputs (a float32 read from random bytes may be NaN) and the label rule is not
defined, so the server leaves key 15 out and the device runs the legacy trial (load, run,
well-formed output).

Wire values: never renumber.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from enum import IntEnum

__all__ = [
    "GOLDEN_DOMAIN",
    "OutputType",
    "golden_input",
    "label_mismatches",
    "outputs_digest",
    "top1_label",
]

GOLDEN_DOMAIN = b"golden"  # domain separation: these hashes are never a digest of anything else
_BLOCK = 32  # bytes one SHA-256 block of the input gives


class OutputType(IntEnum):
    """How a trial compares output bytes to find the top-1 label. Wire values: never renumber."""

    INT8 = 0  # bytes compared as signed
    UINT8 = 1  # bytes compared as unsigned

    @classmethod
    def from_dtype(cls, dtype: str) -> OutputType | None:
        """Return the type for a numpy dtype name ("int8", "uint8"), or None for any other."""
        return {"int8": cls.INT8, "uint8": cls.UINT8}.get(str(dtype))


def golden_input(model_sha256: bytes, index: int, length: int) -> bytes:
    """Return golden input ``index`` (``length`` raw bytes) for the model with this digest."""
    if len(model_sha256) != 32:
        raise ValueError("model_sha256 must be 32 bytes")
    if not 0 <= index <= 0xFFFFFFFF or length < 0:
        raise ValueError("index must be a u32 and length >= 0")
    prefix = model_sha256 + GOLDEN_DOMAIN + index.to_bytes(4, "little")
    blocks = -(-length // _BLOCK)
    out = b"".join(
        hashlib.sha256(prefix + block.to_bytes(4, "little")).digest() for block in range(blocks)
    )
    return out[:length]


def top1_label(output: bytes, output_type: OutputType | int) -> int:
    """Return the index of the first maximum of ``output`` read as int8 or uint8 values."""
    if not output:
        raise ValueError("an output has at least one byte")
    if OutputType(output_type) == OutputType.INT8:
        values: Sequence[int] = [b - 256 if b >= 128 else b for b in output]
    else:
        values = output
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def outputs_digest(outputs: Iterable[bytes]) -> bytes:
    """Return SHA-256 over the outputs' raw bytes, concatenated in input order."""
    h = hashlib.sha256()
    for out in outputs:
        h.update(out)
    return h.digest()


def label_mismatches(expected: Sequence[int], got: Sequence[int]) -> int:
    """Return in how many inputs the labels differ (the two lists must be equally long)."""
    if len(expected) != len(got):
        raise ValueError("label lists differ in length")
    return sum(1 for a, b in zip(expected, got, strict=True) if a != b)
