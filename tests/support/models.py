"""Helpers that derive test models from real ones."""

from __future__ import annotations

from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema


def tweak_weight(tflite: bytes) -> bytes:
    """Return the model with one byte flipped in the middle of its largest weight buffer.

    Same structure, same ops, a slightly different weight: a new version that still validates
    (flipping a byte at a fixed offset may hit the flatbuffer's structure instead).
    """
    model = schema.Model.GetRootAs(tflite, 0)
    largest = b""
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength() > len(largest):
            largest = buf.DataAsNumpy().tobytes()
    start = tflite.find(largest)
    assert len(largest) >= 16 and start >= 0, "no weight buffer to tweak"
    changed = bytearray(tflite)
    changed[start + len(largest) // 2] ^= 1
    return bytes(changed)
