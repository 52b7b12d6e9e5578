"""Quantize a Keras model to a full-integer int8 .tflite and compare accuracies.

TensorFlow costs 3-4 s and ~540 MB to import, so it is imported inside
:func:`convert_keras_to_int8` only; the server calls it from a background job. The int8 model is
scored in the real TFLM interpreter (in a child process, as admission does), so the accuracy
shown is what devices will get; when TFLM cannot run the model, ``tf.lite.Interpreter`` scores it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ota.validation.inspect import TensorInfo, inspect_model
from ota.validation.tflm import probe_model

__all__ = [
    "ConversionError",
    "ConversionResult",
    "ProgressCallback",
    "TensorQuantization",
    "convert_keras_to_int8",
    "load_dataset",
]

ProgressCallback = Callable[[float, str], None]
DEFAULT_MAX_REPRESENTATIVE = 300  # calibration time grows with it; a few hundred is plenty
DEFAULT_MAX_EVAL = 2000


class ConversionError(ValueError):
    """The model or data set cannot be converted; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class TensorQuantization:
    """How a model input or output maps int8 values to real ones: real = scale * (q - zero)."""

    name: str
    shape: list[int]
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass(frozen=True)
class ConversionResult:
    """The int8 model and how well it does next to the float one."""

    tflite_bytes: bytes = field(repr=False)
    representative_samples: int
    evaluated_samples: int  # labelled samples both accuracies are computed on (0: no labels)
    float_accuracy: float | None
    int8_accuracy: float | None
    int8_interpreter: str | None  # "tflm", or "tflite" when TFLM could not run the model
    input_quantization: list[TensorQuantization]
    output_quantization: list[TensorQuantization]
    tensorflow_version: str
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; the model bytes appear as size and SHA-256."""
        return {
            "model_bytes": len(self.tflite_bytes),
            "sha256": hashlib.sha256(self.tflite_bytes).hexdigest(),
            "representative_samples": self.representative_samples,
            "evaluated_samples": self.evaluated_samples,
            "float_accuracy": self.float_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "int8_interpreter": self.int8_interpreter,
            "input_quantization": [vars(q) for q in self.input_quantization],
            "output_quantization": [vars(q) for q in self.output_quantization],
            "tensorflow_version": self.tensorflow_version,
            "elapsed_s": self.elapsed_s,
        }


def load_dataset(
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (x, y or None) from a .npy (x only), a .npz with ``x`` and ``y``, or a mapping."""
    if not isinstance(data, Mapping):
        try:
            loaded = np.load(Path(data), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConversionError("bad_data", f"cannot read {os.fspath(data)!r}: {e}") from e
        data = {"x": loaded} if isinstance(loaded, np.ndarray) else dict(loaded)
    if "x" not in data:
        raise ConversionError("bad_data", f"no 'x' array (found {sorted(data)})")
    x = np.asarray(data["x"])
    y = np.asarray(data["y"]) if data.get("y") is not None else None
    if x.ndim < 2 or len(x) == 0 or x.dtype.kind not in "fiub":
        raise ConversionError(
            "bad_data", f"x must be a non-empty numeric batch, got {x.shape} {x.dtype}"
        )
    if y is not None and len(y) != len(x):
        raise ConversionError("bad_data", f"{len(x)} samples but {len(y)} labels")
    return x.astype(np.float32), y


def convert_keras_to_int8(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    on_progress: ProgressCallback | None = None,
    max_representative: int = DEFAULT_MAX_REPRESENTATIVE,
    max_eval: int = DEFAULT_MAX_EVAL,
) -> ConversionResult:
    """Convert a single-input ``.keras`` model to full-integer int8 TFLite.

    ``data`` gives the representative set (``x``) and, optionally, labels (``y``: class indices
    or one-hot) to report float and int8 accuracy side by side. A one-unit output is taken as
    a sigmoid probability. Raises ConversionError for unusable inputs or a failed conversion.
    """
    started = time.perf_counter()
    report = on_progress or (lambda fraction, message: None)
    x, y = load_dataset(data)

    report(0.0, "loading TensorFlow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ info lines out of job logs
    import tensorflow as tf

    report(0.1, "loading the Keras model")
    try:
        model = tf.keras.models.load_model(os.fspath(model_path), compile=False)
    except Exception as e:  # Keras raises many types for a bad or foreign file
        raise ConversionError("bad_model", f"cannot load {os.fspath(model_path)!r}: {e}") from e
    if len(model.inputs) != 1:
        raise ConversionError("bad_model", f"{len(model.inputs)} inputs; one is supported")
    want = tuple(model.inputs[0].shape[1:])
    if tuple(x.shape[1:]) != want:
        raise ConversionError("bad_data", f"x samples have shape {x.shape[1:]}, model wants {want}")

    rng = np.random.default_rng(0)
    rep = x[rng.permutation(len(x))[:max_representative]]
    x_eval, y_eval = (x[:max_eval], y[:max_eval]) if y is not None else (x[:0], None)
    float_accuracy = None
    if y_eval is not None:
        report(0.15, "scoring the float model")
        scores = model.predict(x_eval, batch_size=256, verbose=0)
        float_accuracy = _accuracy(np.asarray(scores), y_eval)

    report(0.25, f"calibrating on {len(rep)} samples")

    def representative() -> Any:
        step = max(1, len(rep) // 10)
        for i in range(len(rep)):
            if i % step == 0:
                report(0.25 + 0.5 * i / len(rep), f"calibrating: sample {i} of {len(rep)}")
            yield [rep[i : i + 1]]

    # A fixed batch of 1, as a device runs it: with the batch left dynamic the converter keeps
    # run-time shape arithmetic (a Flatten becomes SHAPE, STRIDED_SLICE, PACK and RESHAPE);
    # with it fixed, a Flatten is one RESHAPE and nothing else is computed per inference.
    converter = tf.lite.TFLiteConverter.from_keras_model(_batch_of_one(model, tf))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    # Int8 kernels only: conversion fails rather than leaving float ops a device cannot run.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        tflite_bytes = bytes(converter.convert())
    except Exception as e:  # the converter's errors carry the MLIR diagnostics as text
        raise ConversionError("conversion_failed", str(e).strip()[-2000:]) from e

    inspection = inspect_model(tflite_bytes)
    int8_accuracy, interpreter = None, None
    if y_eval is not None:
        report(0.8, f"scoring the int8 model on {len(x_eval)} samples")
        scores_q, interpreter = _int8_scores(tflite_bytes, x_eval, inspection.outputs[0], tf)
        int8_accuracy = _accuracy(scores_q, y_eval)
    report(1.0, "done")
    return ConversionResult(
        tflite_bytes=tflite_bytes,
        representative_samples=len(rep),
        evaluated_samples=len(x_eval),
        float_accuracy=float_accuracy,
        int8_accuracy=int8_accuracy,
        int8_interpreter=interpreter,
        input_quantization=[_quantization(t) for t in inspection.inputs],
        output_quantization=[_quantization(t) for t in inspection.outputs],
        tensorflow_version=tf.__version__,
        elapsed_s=time.perf_counter() - started,
    )


def _batch_of_one(model: Any, tf: Any) -> Any:
    """Return ``model`` called on an input of static shape ``(1, ...)``: same weights."""
    spec = model.inputs[0]
    fixed = tf.keras.Input(batch_shape=(1, *spec.shape[1:]), dtype=spec.dtype)
    return tf.keras.Model(fixed, model(fixed))


def _int8_scores(
    tflite_bytes: bytes, x: np.ndarray, output: TensorInfo, tf: Any
) -> tuple[np.ndarray, str]:
    """Run the int8 model on float inputs; return dequantized output 0 and the interpreter."""
    probe = probe_model(tflite_bytes, samples=x, max_samples=len(x), timeout_s=120.0)
    if probe.ok:
        raw = np.array([sample[0] for sample in probe.sample_outputs]).reshape(len(x), -1)
        return _dequantize(raw, output), "tflm"

    interp = tf.lite.Interpreter(model_content=tflite_bytes)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    q = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    rows = []
    for i in range(len(q)):
        interp.set_tensor(inp["index"], q[i : i + 1])
        interp.invoke()
        rows.append(interp.get_tensor(out["index"]).reshape(-1))
    return _dequantize(np.array(rows), output), "tflite"


def _dequantize(raw: np.ndarray, output: TensorInfo) -> np.ndarray:
    q = output.quantization
    if q is None:
        return raw.astype(np.float32)
    return (raw.astype(np.float32) - q.zero_points[0]) * q.scales[0]


def _accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    """Return the share of samples whose predicted class equals the label."""
    scores = scores.reshape(len(scores), -1)
    labels = y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1)
    if scores.shape[1] == 1:
        predicted = (scores[:, 0] > 0.5).astype(np.int64)
    else:
        predicted = scores.argmax(axis=1)
    return float(np.mean(predicted == labels.astype(np.int64)))


def _quantization(t: TensorInfo) -> TensorQuantization:
    q = t.quantization
    return TensorQuantization(
        name=t.name,
        shape=list(t.shape),
        dtype=t.dtype,
        scale=q.scales[0] if q else None,
        zero_point=q.zero_points[0] if q else None,
    )
