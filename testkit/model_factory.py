"""Build small, real models for tests and benches with TensorFlow (imported lazily: it is slow),
and derive variants of real models (:func:`tweak_weight`).

Each builder returns what a test needs and is deterministic enough to assert exact reasons.
Use the session fixtures in ``tests/ota/conftest.py`` rather than calling builders per test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema


@dataclass(frozen=True)
class KerasArtifacts:
    """A trained Keras model on disk with its data set (``x``, ``y``) and an int8 conversion."""

    model_path: Path
    data_path: Path  # .npz with x (float32) and y (class indices)
    x: np.ndarray
    y: np.ndarray
    tflite: bytes


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    return tf


def make_blobs(
    n: int = 800, features: int = 16, classes: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return separable Gaussian blobs in [0, 1]: float32 features and int64 labels."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.2, 0.8, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0, 0.05, size=(n, features))
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)


def to_int8(model: Any, representative: np.ndarray, *, builtins_fallback: bool = False) -> bytes:
    """Convert a Keras model to int8 TFLite the standard way (independent of ota.conversion)."""
    tf = _tf()

    def samples() -> Iterator[list[np.ndarray]]:
        for row in representative:
            yield [row[np.newaxis].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    if builtins_fallback:
        # Lets an op without an int8 kernel (TOPK_V2) stay a float builtin instead of failing.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS,
        ]  # fmt: skip
    else:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def dense_classifier(directory: Path) -> KerasArtifacts:
    """Train a 16-32-4 MLP on blobs; save it as .keras with its data set, and convert it."""
    tf = _tf()
    x, y = make_blobs()
    model = tf.keras.Sequential([
        tf.keras.Input((16,)),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(4, activation="softmax"),
    ])  # fmt: skip
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / "dense.keras"
    data_path = directory / "dense_data.npz"
    model.save(model_path)
    np.savez(data_path, x=x, y=y)
    return KerasArtifacts(model_path, data_path, x, y, to_int8(model, x[:200]))


def conv_model() -> bytes:
    """Return a small int8 CNN (32x32x1 -> 4): CONV_2D, MAX_POOL_2D, MEAN, FULLY_CONNECTED."""
    tf = _tf()
    model = tf.keras.Sequential([
        tf.keras.Input((32, 32, 1)),
        tf.keras.layers.Conv2D(8, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(4, activation="softmax"),
    ])  # fmt: skip
    rep = np.random.default_rng(1).random((50, 32, 32, 1), dtype=np.float32)
    return to_int8(model, rep)


def topk_model() -> bytes:
    """Return a model whose tf.math.top_k stays a TOPK_V2 builtin, which TFLM does not have."""
    tf = _tf()

    class TopK(tf.keras.layers.Layer):
        def call(self, inputs: Any) -> Any:
            return tf.math.top_k(inputs, k=2).values

    inputs = tf.keras.Input((16,))
    outputs = TopK()(tf.keras.layers.Dense(8)(inputs))
    rep = np.random.default_rng(2).random((50, 16), dtype=np.float32)
    return to_int8(tf.keras.Model(inputs, outputs), rep, builtins_fallback=True)


def big_arena_model() -> bytes:
    """Return a ~9 KB int8 CNN whose 64x64x32 activations need ~200 KB of arena."""
    tf = _tf()
    model = tf.keras.Sequential([
        tf.keras.Input((64, 64, 1)),
        tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(4),
    ])  # fmt: skip
    rep = np.random.default_rng(3).random((20, 64, 64, 1), dtype=np.float32)
    return to_int8(model, rep)


def edit_model(tflite: bytes, edit: Callable[[Any], None]) -> bytes:
    """Unpack a model with the flatbuffer object API, apply ``edit``, and pack it again."""
    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    edit(model)
    builder = flatbuffers.Builder(len(tflite) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def with_custom_op(tflite: bytes, builtin: str, custom_name: str) -> bytes:
    """Turn every use of the builtin op ``builtin`` into a custom op called ``custom_name``."""
    code = getattr(schema.BuiltinOperator, builtin)

    def edit(model: Any) -> None:
        for oc in model.operatorCodes:
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
                oc.customCode = custom_name

    return edit_model(tflite, edit)


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
