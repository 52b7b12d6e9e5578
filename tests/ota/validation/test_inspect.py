"""Inspection of .tflite files without TensorFlow."""

from __future__ import annotations

import json
import random

import pytest

from ota.validation.inspect import ModelFormatError, builtin_op_name, inspect_model
from testkit import model_factory


def test_dense_model_lists_ops_tensors_and_quantization(dense_tflite: bytes) -> None:
    """The MLP shows its two ops, int8 input/output with scale and zero point, and weights."""
    info = inspect_model(dense_tflite)

    assert info.ops == ["FULLY_CONNECTED", "SOFTMAX"]
    assert info.size_bytes == len(dense_tflite)
    assert info.schema_version == 3
    assert len(info.subgraphs) == 1 and info.operator_count == 3
    (inp,) = info.inputs
    (out,) = info.outputs
    assert (inp.shape, inp.dtype, inp.bytes) == ([1, 16], "INT8", 16)
    assert inp.shape_signature == [-1, 16]
    assert inp.quantization is not None and inp.quantization.scales[0] > 0
    assert inp.quantization.zero_points == [-128]  # inputs in [0, 1] map to the int8 range
    assert (out.shape, out.dtype) == ([1, 4], "INT8")
    weights = [t for t in info.subgraphs[0].tensors if t.shape == [32, 16]]
    assert weights and weights[0].buffer_bytes == 32 * 16
    assert weights[0].quantization is not None and weights[0].quantization.per_channel
    assert info.constant_bytes >= 32 * 16 + 4 * 32


def test_report_is_json_ready(conv_tflite: bytes) -> None:
    """to_dict() goes through json unchanged."""
    data = inspect_model(conv_tflite).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["ops"] == ["CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    assert data["operator_count"] == 6


def test_topk_stays_a_builtin_op(topk_tflite: bytes) -> None:
    """TOPK_V2 is listed by its builtin name, next to the float ops around it."""
    info = inspect_model(topk_tflite)
    assert "TOPK_V2" in info.ops
    topk = [op for op in info.subgraphs[0].operators if op.op == "TOPK_V2"]
    assert topk and not topk[0].custom and topk[0].builtin_code == 48


def test_custom_op_is_named_by_its_custom_code(dense_tflite: bytes) -> None:
    """A custom op shows its own name, not CUSTOM."""
    model = model_factory.with_custom_op(dense_tflite, "SOFTMAX", "MyFancyOp")
    info = inspect_model(model)
    assert info.ops == ["FULLY_CONNECTED", "MyFancyOp"]
    assert info.subgraphs[0].operators[-1].custom


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too_short"),
        (b"TFL3", "too_short"),
        (b"this is not a flatbuffer at all", "bad_identifier"),
        (bytes(64), "bad_identifier"),
    ],
)
def test_garbage_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    """Bytes that are not a model raise ModelFormatError with a short reason code."""
    with pytest.raises(ModelFormatError) as err:
        inspect_model(data)
    assert err.value.reason == reason


def test_truncated_model_is_corrupt(conv_tflite: bytes) -> None:
    """A model cut in half is refused as corrupt, naming what points outside the file."""
    with pytest.raises(ModelFormatError) as err:
        inspect_model(conv_tflite[: len(conv_tflite) // 2])
    assert err.value.reason == "corrupt"
    assert "outside the file" in str(err.value)


def test_wrong_schema_version_is_refused(dense_tflite: bytes) -> None:
    """Only schema version 3 is accepted."""

    def edit(model: object) -> None:
        model.version = 2  # type: ignore[attr-defined]

    with pytest.raises(ModelFormatError) as err:
        inspect_model(model_factory.edit_model(dense_tflite, edit))
    assert err.value.reason == "bad_version"


def test_mutated_models_raise_only_model_format_error(conv_tflite: bytes) -> None:
    """Random byte flips either parse or raise ModelFormatError, never anything else."""
    rng = random.Random(0)
    refused = 0
    for _ in range(400):
        data = bytearray(conv_tflite)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        try:
            inspect_model(bytes(data))
        except ModelFormatError:
            refused += 1
    assert refused > 0


def test_builtin_op_names_follow_tflite() -> None:
    """Codes map to TFLite's spelling; unknown codes are marked."""
    assert builtin_op_name(3) == "CONV_2D"
    assert builtin_op_name(9) == "FULLY_CONNECTED"
    assert builtin_op_name(9999) == "UNKNOWN_9999"
