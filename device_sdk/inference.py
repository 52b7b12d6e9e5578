"""Run a .tflite model in the real TensorFlow Lite Micro interpreter, on synthetic sensor data.

:class:`TflmModel` wraps one ``tflite_micro`` interpreter and turns its int8 output into the
fields of an :class:`~device_sdk.protocol.events.Event`: the label is the argmax, the score the
top-1 probability scaled to 0..255 (from the dequantized softmax, or a softmax of the
dequantized logits when the model ends without one), the latency the measured time of
``invoke()`` in 100 µs units.

:class:`SensorStream` makes inputs the model can classify, without knowing its training data:
once per model it searches the input space for one prototype per class (an input the model
puts in that class with high confidence) and a noise level per class that keeps most samples in
their class. A sample draws a class from the stream's label mix, adds Gaussian noise to the
prototype, and quantizes with the input tensor's scale and zero point. :meth:`SensorStream.set_mix`
is the drift knob: change the mix and the model's label distribution follows.

Thread safety: a TFLM interpreter has one arena and one set of input and output tensors, so it
is not reentrant. :class:`TflmModel` holds a lock around set_input/invoke/get_output, which lets
any number of simulated devices on any number of threads share one loaded model. A
:class:`SensorStream` belongs to one device (its random generator is not shared); only
``set_mix`` may be called from another thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from device_sdk.protocol.events import Event
from device_sdk.protocol.limits import MAX_LATENCY_100US
from device_sdk.protocol.status import Capabilities

__all__ = [
    "HOST_OPS",
    "Inference",
    "SensorStream",
    "TflmModel",
    "host_capabilities",
    "model_ops",
    "parse_mix",
]

# Kernels of the host build of TFLM (the tflite-micro wheel registers every kernel it has);
# these are the ones a device reports, plus whatever op its loaded model uses.
HOST_OPS: tuple[str, ...] = (
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
    "EXPAND_DIMS", "FULLY_CONNECTED", "HARD_SWISH", "LEAKY_RELU", "LOGISTIC", "MAX_POOL_2D",
    "MEAN", "MUL", "PACK", "PAD", "QUANTIZE", "RELU", "RELU6", "RESHAPE", "SHAPE", "SOFTMAX",
    "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "TANH", "TRANSPOSE", "TRANSPOSE_CONV", "UNPACK",
)  # fmt: skip
DEFAULT_ARENA_BYTES = 256 * 1024
# Far too small an arena segfaults TFLM (PLATFORM-NOTES): never go below this floor.
MIN_ARENA_BYTES = 16 * 1024
_SOFTMAX_SCALE = 1.0 / 256  # the int8 quantization TFLite mandates for SOFTMAX outputs
_SOFTMAX_ZERO_POINT = -128
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


@dataclass(frozen=True, slots=True)
class Inference:
    """One classification: label, 0..255 confidence, measured latency, and the probabilities."""

    label: int
    score: int
    latency_100us: int
    probabilities: np.ndarray

    def event(self, t_ms: int) -> Event:
        """Return the telemetry event for this inference, taken at unix time ``t_ms``."""
        return Event(t_ms, self.label, self.score, self.latency_100us)


def model_ops(model: bytes) -> list[str]:
    """Return the builtin op names a .tflite model uses, as TFLite spells them."""
    parsed = schema.Model.GetRootAsModel(model, 0)
    names = set()
    for i in range(parsed.OperatorCodesLength()):
        code = parsed.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        names.add(_OP_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(names)


def tflm_version() -> str:
    """Return the version of the TFLM interpreter package."""
    try:
        return f"tflite-micro {version('tflite-micro')}"[:64]
    except PackageNotFoundError:
        return "tflite-micro"


def host_capabilities(
    model: TflmModel | None = None, *, slot_bytes: int = 1024 * 1024, firmware: str = ""
) -> Capabilities:
    """Return what this host build can run: TFLM's kernels, the arena, 64-bit pointers."""
    try:
        sdk = version("tinyml-fleet")
    except PackageNotFoundError:
        sdk = "0"
    ops = sorted(set(HOST_OPS) | set(model.ops if model else ()))
    return Capabilities(
        firmware_version=firmware or f"device-sdk-py {sdk}",
        tflm_version=tflm_version(),
        ops=ops,
        arena_bytes=model.arena_bytes if model else DEFAULT_ARENA_BYTES,
        slot_bytes=slot_bytes,
        pointer_bits=64,
    )


class TflmModel:
    """A model loaded in one TFLM interpreter, shareable across threads (one lock)."""

    def __init__(
        self,
        model: bytes,
        *,
        arena_bytes: int | None = None,
        package_id: int = 0,
        latency_scale: float = 1.0,
    ) -> None:
        """Load ``model``; ``package_id`` is the OTA package it came in (0: factory model).

        ``latency_scale`` multiplies measured latencies, to report what a slower MCU would
        take (a desktop core runs these kernels tens of times faster than a Cortex-M).
        """
        self.model_bytes = bytes(model)
        self.package_id = package_id
        self.latency_scale = latency_scale
        self.arena_bytes = max(MIN_ARENA_BYTES, arena_bytes or DEFAULT_ARENA_BYTES)
        self.ops = model_ops(self.model_bytes)
        self._lock = threading.Lock()
        self._interpreter = runtime.Interpreter.from_bytes(
            self.model_bytes, arena_size=self.arena_bytes
        )
        inp = self._interpreter.get_input_details(0)
        out = self._interpreter.get_output_details(0)
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in inp["shape"])
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_scale, self.input_zero_point = _quantization(inp)
        self.output_dtype = np.dtype(out["dtype"])
        self.output_scale, self.output_zero_point = _quantization(out)
        self.num_classes = int(np.prod(out["shape"][1:])) if len(out["shape"]) > 1 else 1
        # An int8 SOFTMAX output always has scale 1/256 and zero point -128 (TFLite's spec);
        # anything else is taken for logits and gets a softmax here.
        int8_softmax = (
            self.output_dtype == np.int8
            and abs(self.output_scale - _SOFTMAX_SCALE) < 1e-9
            and self.output_zero_point == _SOFTMAX_ZERO_POINT
        )
        float_softmax = self.output_dtype == np.float32 and "SOFTMAX" in self.ops
        self._output_is_softmax = int8_softmax or float_softmax
        self._prototypes: tuple[np.ndarray, np.ndarray] | None = None
        self._proto_lock = threading.Lock()

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        arena_bytes: int | None = None,
        package_id: int = 0,
        latency_scale: float = 1.0,
    ) -> TflmModel:
        """Load a .tflite file."""
        return cls(
            Path(path).read_bytes(), arena_bytes=arena_bytes, package_id=package_id,
            latency_scale=latency_scale,
        )

    # -- running --------------------------------------------------------------------------

    def input_range(self) -> tuple[float, float]:
        """Return the real-valued range the input tensor can represent."""
        if self.input_dtype == np.int8:
            q = np.array([-128, 127], dtype=np.float64)
        elif self.input_dtype == np.uint8:
            q = np.array([0, 255], dtype=np.float64)
        else:
            return (0.0, 1.0)
        lo, hi = (q - self.input_zero_point) * self.input_scale
        return float(lo), float(hi)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Quantize real-valued inputs with the input tensor's scale and zero point."""
        if self.input_dtype not in (np.int8, np.uint8):
            return np.asarray(x, dtype=self.input_dtype)
        # In place on one temporary: this runs once per simulated inference, thousands per second.
        q = np.asarray(x, dtype=np.float64) * (1.0 / self.input_scale)
        np.rint(q, out=q)
        q += self.input_zero_point
        info = np.iinfo(self.input_dtype)
        np.clip(q, info.min, info.max, out=q)
        return q.astype(self.input_dtype)

    def infer(self, x: np.ndarray) -> Inference:
        """Run one inference on an already quantized input; safe from any thread."""
        if x.dtype != self.input_dtype or x.shape != self.input_shape:
            x = np.asarray(x, dtype=self.input_dtype).reshape(self.input_shape)
        with self._lock:
            self._interpreter.set_input(x, 0)
            started = time.perf_counter_ns()
            self._interpreter.invoke()
            elapsed_ns = time.perf_counter_ns() - started
            raw = np.array(self._interpreter.get_output(0), copy=True)
        probs = self.probabilities(raw)
        label = int(np.argmax(probs))
        score = min(255, int(probs[label] * 255 + 0.5))
        latency = min(MAX_LATENCY_100US, int(elapsed_ns * self.latency_scale + 50_000) // 100_000)
        return Inference(label, score, latency, probs)

    @property
    def input_bytes(self) -> int:
        """Return the byte size of input tensor 0."""
        return int(np.prod(self.input_shape)) * self.input_dtype.itemsize

    def invoke_raw(self, data: bytes) -> bytes:
        """Run once on input tensor 0's raw bytes; return output tensor 0's raw bytes."""
        if len(data) != self.input_bytes:
            raise ValueError(f"input is {self.input_bytes} bytes, not {len(data)}")
        x = np.frombuffer(data, dtype=self.input_dtype).reshape(self.input_shape)
        with self._lock:
            self._interpreter.set_input(x, 0)
            self._interpreter.invoke()
            return np.ascontiguousarray(self._interpreter.get_output(0)).tobytes()

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Turn a raw output tensor into class probabilities."""
        flat = raw.reshape(-1).astype(np.float64)
        if self.output_dtype in (np.int8, np.uint8):
            flat = (flat - self.output_zero_point) * self.output_scale
        if self._output_is_softmax:
            return np.clip(flat, 0.0, 1.0)
        shifted = np.exp(flat - flat.max())
        return shifted / shifted.sum()

    # -- prototypes for the synthetic stream ----------------------------------------------

    def prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (one real-valued input per class, a noise sigma per class), computed once."""
        with self._proto_lock:
            if self._prototypes is None:
                self._prototypes = _find_prototypes(self)
            return self._prototypes


def _quantization(details: dict[str, object]) -> tuple[float, int]:
    params = details.get("quantization_parameters") or {}
    scales = params.get("scales") if isinstance(params, dict) else None
    zeros = params.get("zero_points") if isinstance(params, dict) else None
    if scales is None or len(scales) == 0:
        return 1.0, 0
    return float(scales[0]), int(zeros[0]) if zeros is not None and len(zeros) else 0


def _find_prototypes(model: TflmModel, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Search the input space for one confidently classified input per class.

    Random inputs first; then, for a class none of them hit well, a hill climb on that class's
    probability. Finally each class gets the largest noise sigma (halving from 10% of the
    input range) at which at least 85% of noisy samples stay in the class.
    """
    rng = np.random.default_rng(seed)
    lo, hi = model.input_range()
    span = hi - lo
    shape = model.input_shape
    classes = model.num_classes

    def probs_of(x: np.ndarray) -> np.ndarray:
        return model.infer(model.quantize(x)).probabilities

    candidates = rng.uniform(lo, hi, size=(256, *shape))
    scored = np.stack([probs_of(c) for c in candidates])
    protos = np.empty((classes, *shape))
    for c in range(classes):
        best = candidates[int(np.argmax(scored[:, c]))].copy()
        best_p = probs_of(best)[c]
        step = 0.2 * span
        for _ in range(300):
            if best_p >= 0.95:
                break
            trial = np.clip(best + rng.normal(0, step, size=shape), lo, hi)
            p = probs_of(trial)[c]
            if p > best_p:
                best, best_p = trial, p
            else:
                step = max(step * 0.98, 0.01 * span)
        protos[c] = best
    sigmas = np.empty(classes)
    for c in range(classes):
        sigma = 0.1 * span
        for _ in range(6):
            noisy = protos[c] + rng.normal(0, sigma, size=(40, *shape))
            hits = sum(int(np.argmax(probs_of(x))) == c for x in noisy)
            if hits >= 34:
                break
            sigma /= 2
        sigmas[c] = sigma
    return protos, sigmas


def parse_mix(text: str | Sequence[float], classes: int) -> np.ndarray:
    """Parse a label mix ("0.7,0.1,0.1,0.1" or weights) into probabilities over ``classes``.

    Weights need not sum to 1; missing trailing classes get weight 0.
    """
    values = [float(v) for v in text.split(",")] if isinstance(text, str) else list(text)
    if len(values) > classes or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"a label mix is 1..{classes} non-negative weights, not all zero")
    weights = np.zeros(classes)
    weights[: len(values)] = values
    return weights / weights.sum()


class SensorStream:
    """Synthetic readings for one device: noisy class prototypes drawn from a label mix."""

    def __init__(
        self,
        model: TflmModel,
        *,
        mix: str | Sequence[float] | None = None,
        seed: int | None = None,
        noise_scale: float = 1.0,
    ) -> None:
        """``noise_scale`` > 1 blurs the readings: lower confidence, as a degraded model shows."""
        self.model = model
        self._protos, sigmas = model.prototypes()
        self._sigmas = sigmas * noise_scale
        self._rng = np.random.default_rng(seed)
        self._mix = self._as_mix(mix)
        self._cdf = np.cumsum(self._mix)

    @property
    def mix(self) -> np.ndarray:
        """Return the current probability of each class."""
        return self._mix

    def set_mix(self, mix: str | Sequence[float] | None) -> None:
        """Change the label mix (None: uniform); safe from another thread."""
        new = self._as_mix(mix)
        # Swap both arrays by reference: a concurrent sample sees the old or the new, whole.
        self._mix, self._cdf = new, np.cumsum(new)

    def sample(self) -> tuple[int, np.ndarray]:
        """Return (the class drawn, a quantized input of the model's shape)."""
        cdf = self._cdf
        c = min(int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right")),
                len(cdf) - 1)
        x = self._protos[c] + self._rng.normal(0.0, self._sigmas[c], size=self._protos[c].shape)
        return c, self.model.quantize(x)

    def infer(self, t_ms: int | None = None) -> Event:
        """Sample one reading, run the model on it, and return the event."""
        _, x = self.sample()
        result = self.model.infer(x)
        return result.event(int(time.time() * 1000) if t_ms is None else t_ms)

    def _as_mix(self, mix: str | Sequence[float] | None) -> np.ndarray:
        classes = self.model.num_classes
        if mix is None:
            return np.full(classes, 1.0 / classes)
        return parse_mix(mix, classes)
