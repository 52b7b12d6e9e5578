"""Read a .tflite flatbuffer without TensorFlow: operators, subgraphs, tensors, quantization.

The parser uses the flatbuffer schema module that ships inside the ``tflite-micro`` wheel, so
the server can list what a model needs without importing TensorFlow (3-4 s, ~540 MB).
Everything returned is a plain dataclass whose ``to_dict()`` is JSON-ready.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

__all__ = [
    "ModelFormatError",
    "ModelInspection",
    "OperatorInfo",
    "QuantizationInfo",
    "SubgraphInfo",
    "TensorInfo",
    "builtin_op_name",
    "inspect_file",
    "inspect_model",
]

# The schema keeps names as class attributes; invert them once for lookups by code.
_BUILTIN_NAMES: dict[int, str] = {
    value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}
_TYPE_NAMES: dict[int, str] = {
    value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")
}
# Bits per element; types without a fixed size (STRING, RESOURCE, VARIANT) are absent.
_TYPE_BITS: dict[str, int] = {
    "FLOAT32": 32, "FLOAT16": 16, "INT32": 32, "UINT8": 8, "INT64": 64, "BOOL": 8,
    "INT16": 16, "COMPLEX64": 64, "INT8": 8, "FLOAT64": 64, "COMPLEX128": 128, "UINT64": 64,
    "UINT32": 32, "UINT16": 16, "INT4": 4, "BFLOAT16": 16, "INT2": 2, "UINT4": 4,
    "FLOAT8_E4M3FN": 8, "FLOAT8_E5M2": 8,
}  # fmt: skip
_TFLITE_SCHEMA_VERSION = 3
_CUSTOM_CODE = schema.BuiltinOperator.CUSTOM


class ModelFormatError(ValueError):
    """The bytes are not a TFLite model this parser can read; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class QuantizationInfo:
    """Affine quantization of a tensor: one scale/zero point, or one per channel."""

    scales: list[float]
    zero_points: list[int]
    quantized_dimension: int

    @property
    def per_channel(self) -> bool:
        """Tell whether the tensor has one scale per channel."""
        return len(self.scales) > 1


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a subgraph; ``buffer_bytes`` > 0 means constant data stored in the model."""

    index: int
    name: str
    shape: list[int]
    shape_signature: list[int]  # -1 marks a dynamic dimension
    dtype: str  # TFLite spelling: INT8, FLOAT32, ...
    bytes: int | None  # size of the data for the static shape; None when not computable
    buffer: int
    buffer_bytes: int
    is_variable: bool
    quantization: QuantizationInfo | None


@dataclass(frozen=True)
class OperatorInfo:
    """One operator node; ``op`` is the builtin name (CONV_2D) or the custom op's name."""

    index: int
    op: str
    builtin_code: int
    custom: bool
    version: int
    inputs: list[int]  # tensor indices; -1 marks an omitted optional input
    outputs: list[int]


@dataclass(frozen=True)
class SubgraphInfo:
    """One subgraph: its tensors, operators, and the tensor indices of its inputs/outputs."""

    index: int
    name: str
    inputs: list[int]
    outputs: list[int]
    tensors: list[TensorInfo]
    operators: list[OperatorInfo]


@dataclass(frozen=True)
class ModelInspection:
    """What a model contains, as far as admission checks need to know."""

    size_bytes: int
    schema_version: int
    description: str
    ops: list[str]  # distinct op names in order of first use
    subgraphs: list[SubgraphInfo]
    inputs: list[TensorInfo]  # of the main subgraph (index 0), in signature order
    outputs: list[TensorInfo]
    constant_bytes: int  # total size of the model's data buffers (weights, biases)
    metadata: list[str] = field(default_factory=list)  # names of metadata entries
    # Ops that are there only because the input's batch dimension is dynamic (-1): run-time
    # shape arithmetic (SHAPE, STRIDED_SLICE, PACK, ...) a fixed batch of 1 folds away.
    dynamic_batch_ops: list[str] = field(default_factory=list)
    dynamic_batch_advice: str = ""

    @property
    def operator_count(self) -> int:
        """Count operator nodes across all subgraphs."""
        return sum(len(sg.operators) for sg in self.subgraphs)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field plus the operator count."""
        data = asdict(self)
        data["operator_count"] = self.operator_count
        return data


def builtin_op_name(code: int) -> str:
    """Return TFLite's spelling of a builtin operator code (``UNKNOWN_<n>`` if unknown)."""
    return _BUILTIN_NAMES.get(code, f"UNKNOWN_{code}")


def inspect_file(path: str | Path) -> ModelInspection:
    """Inspect the model stored at ``path``."""
    return inspect_model(Path(path).read_bytes())


def inspect_model(data: bytes | bytearray | memoryview) -> ModelInspection:
    """Parse a .tflite flatbuffer and describe it; raise ModelFormatError when malformed."""
    buf = bytes(data)
    if len(buf) < 8:
        raise ModelFormatError("too_short", f"{len(buf)} bytes; a TFLite model has at least 8")
    if not schema.Model.ModelBufferHasIdentifier(buf, 0):
        raise ModelFormatError(
            "bad_identifier",
            f"file identifier is {buf[4:8]!r}, expected b'TFL3' (not a TFLite flatbuffer)",
        )
    try:
        inspection = _parse(buf)
        # Read every table once more, options included, as TFLM's Python wrapper will: the
        # fields _parse skips can be corrupt too (a few ms even for a 250 KB model).
        schema.ModelT.InitFromPackedBuf(buf, 0)
    except ModelFormatError:
        raise
    # Out-of-range offsets surface as these from flatbuffers' struct/numpy reads.
    except (
        IndexError,
        struct.error,
        ValueError,
        TypeError,
        OverflowError,
        UnicodeDecodeError,
    ) as e:
        raise ModelFormatError("corrupt", f"flatbuffer offsets point outside the file ({e})") from e
    return inspection


def _parse(buf: bytes) -> ModelInspection:
    model = schema.Model.GetRootAs(buf, 0)
    version = model.Version()
    if version != _TFLITE_SCHEMA_VERSION:
        raise ModelFormatError(
            "bad_version", f"schema version {version}, expected {_TFLITE_SCHEMA_VERSION}"
        )
    n_subgraphs = _checked_len(buf, model.SubgraphsLength(), "subgraphs")
    if n_subgraphs == 0:
        raise ModelFormatError("no_subgraphs", "the model has no subgraph to run")

    buffer_sizes = [
        _buffer_size(model.Buffers(i))
        for i in range(_checked_len(buf, model.BuffersLength(), "buffers"))
    ]
    op_codes = [
        _op_code(model.OperatorCodes(i))
        for i in range(_checked_len(buf, model.OperatorCodesLength(), "operator codes"))
    ]
    subgraphs = [
        _subgraph(model.Subgraphs(i), i, op_codes, buffer_sizes, buf) for i in range(n_subgraphs)
    ]
    ops: list[str] = []
    for sg in subgraphs:
        for op in sg.operators:
            if op.op not in ops:
                ops.append(op.op)
    main = subgraphs[0]
    batch_ops = dynamic_batch_ops(main, buffer_sizes)
    metadata = [
        _text(model.Metadata(i).Name())
        for i in range(_checked_len(buf, model.MetadataLength(), "metadata"))
    ]
    return ModelInspection(
        size_bytes=len(buf),
        schema_version=version,
        description=_text(model.Description()),
        ops=ops,
        subgraphs=subgraphs,
        inputs=[main.tensors[i] for i in main.inputs],
        outputs=[main.tensors[i] for i in main.outputs],
        constant_bytes=sum(buffer_sizes),
        metadata=metadata,
        dynamic_batch_ops=batch_ops,
        dynamic_batch_advice=DYNAMIC_BATCH_ADVICE.format(ops=", ".join(batch_ops))
        if batch_ops else "",
    )


DYNAMIC_BATCH_ADVICE = (
    "The input's batch dimension is dynamic (-1), so the converter computes shapes at run time "
    "with {ops}: kernels the device must register and run on every inference for nothing. "
    "Convert with a fixed batch of 1 (tf.keras.Input(batch_shape=(1, ...)), or a concrete "
    "function of tf.TensorSpec([1, ...])); a Flatten then becomes a single RESHAPE. Uploading "
    "the Keras model with a data set converts it that way."
)


def dynamic_batch_ops(sg: SubgraphInfo, buffer_sizes: list[int]) -> list[str]:
    """Name the ops of ``sg`` that only a dynamic batch brought in (empty: none, or static).

    Starting from every SHAPE op, follow the operators whose every non-constant input is
    computed from a shape: that chain is shape arithmetic. The op that finally uses the shape
    (a RESHAPE taking it as its new shape) also takes real data, so it stays; op names the
    model also uses outside the chain stay too.
    """
    if not any(t.shape_signature[:1] == [-1] for t in (sg.tensors[i] for i in sg.inputs)):
        return []

    def constant(t: int) -> bool:
        tensor = sg.tensors[t]
        return t == -1 or (tensor.buffer > 0 and tensor.buffer < len(buffer_sizes)
                           and buffer_sizes[tensor.buffer] > 0)

    shaped: set[int] = set()
    chain: list[OperatorInfo] = []
    for op in sg.operators:  # TFLite stores operators in execution order
        live = [t for t in op.inputs if not constant(t)]
        if op.op == "SHAPE" or (live and all(t in shaped for t in live)):
            shaped.update(op.outputs)
            chain.append(op)
    in_chain = {op.index for op in chain}
    elsewhere = {op.op for op in sg.operators if op.index not in in_chain}
    names: list[str] = []
    for op in chain:
        if op.op not in elsewhere and op.op not in names:
            names.append(op.op)
    return names


def _checked_len(buf: bytes, length: int, what: str, elem_size: int = 4) -> int:
    # A garbage length would make us loop for a long time before the first bad read.
    if length < 0 or length * elem_size > len(buf):
        raise ModelFormatError("corrupt", f"{what} vector claims {length} entries")
    return length


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def _buffer_size(b: Any) -> int:
    # Models over 2 GB keep data outside the flatbuffer: offset > 1 with an explicit size.
    if b.Offset() > 1:
        return int(b.Size())
    return int(b.DataLength())


def _op_code(code: Any) -> tuple[str, int, bool, int]:
    # Codes above 127 live only in BuiltinCode; older files use the deprecated int8 field.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == _CUSTOM_CODE:
        name = _text(code.CustomCode()) or "CUSTOM"
        return name, builtin, True, code.Version()
    return builtin_op_name(builtin), builtin, False, code.Version()


def _int_list(values: Any) -> list[int]:
    # *AsNumpy returns 0 (not an array) when the field is absent.
    if isinstance(values, int):
        return []
    return [int(v) for v in values]


def _subgraph(
    sg: Any,
    index: int,
    op_codes: list[tuple[str, int, bool, int]],
    buffer_sizes: list[int],
    buf: bytes,
) -> SubgraphInfo:
    tensors = [
        _tensor(sg.Tensors(t), t, buffer_sizes)
        for t in range(_checked_len(buf, sg.TensorsLength(), "tensors"))
    ]
    inputs = _int_list(sg.InputsAsNumpy())
    outputs = _int_list(sg.OutputsAsNumpy())
    for t in inputs + outputs:
        if not 0 <= t < len(tensors):
            raise ModelFormatError(
                "bad_index", f"subgraph {index} names tensor {t} of {len(tensors)}"
            )
    operators = []
    for i in range(_checked_len(buf, sg.OperatorsLength(), "operators")):
        op = sg.Operators(i)
        opcode_index = op.OpcodeIndex()
        if not 0 <= opcode_index < len(op_codes):
            raise ModelFormatError(
                "bad_index", f"operator {i} uses opcode {opcode_index} of {len(op_codes)}"
            )
        name, builtin, custom, version = op_codes[opcode_index]
        op_inputs = _int_list(op.InputsAsNumpy())
        op_outputs = _int_list(op.OutputsAsNumpy())
        for t in op_inputs + op_outputs:
            if not -1 <= t < len(tensors):
                raise ModelFormatError("bad_index", f"operator {i} ({name}) names tensor {t}")
        operators.append(OperatorInfo(i, name, builtin, custom, version, op_inputs, op_outputs))
    return SubgraphInfo(index, _text(sg.Name()), inputs, outputs, tensors, operators)


def _tensor(t: Any, index: int, buffer_sizes: list[int]) -> TensorInfo:
    shape = _int_list(t.ShapeAsNumpy())
    dtype = _TYPE_NAMES.get(t.Type(), f"UNKNOWN_{t.Type()}")
    buffer = t.Buffer()
    if not 0 <= buffer < max(len(buffer_sizes), 1):
        raise ModelFormatError("bad_index", f"tensor {index} uses buffer {buffer}")
    bits = _TYPE_BITS.get(dtype)
    n_bytes = None
    if bits is not None and all(d >= 0 for d in shape):
        n_bytes = math.ceil(math.prod(shape) * bits / 8)
    return TensorInfo(
        index=index,
        name=_text(t.Name()),
        shape=shape,
        shape_signature=_int_list(t.ShapeSignatureAsNumpy()) or shape,
        dtype=dtype,
        bytes=n_bytes,
        buffer=buffer,
        buffer_bytes=buffer_sizes[buffer] if buffer_sizes else 0,
        is_variable=bool(t.IsVariable()),
        quantization=_quantization(t.Quantization()),
    )


def _quantization(q: Any) -> QuantizationInfo | None:
    if q is None or q.ScaleLength() == 0:
        return None
    scales = q.ScaleAsNumpy()
    zero_points = q.ZeroPointAsNumpy()
    return QuantizationInfo(
        scales=[float(s) for s in scales],
        zero_points=_int_list(zero_points),
        quantized_dimension=int(q.QuantizedDimension()),
    )
