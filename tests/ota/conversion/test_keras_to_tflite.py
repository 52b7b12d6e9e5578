"""Keras to int8 TFLite conversion with float and int8 accuracy side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ota.conversion.keras_to_tflite import ConversionError, convert_keras_to_int8
from ota.validation.inspect import inspect_model
from testkit import model_factory

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_converts_with_labels_and_reports_both_accuracies(
    dense_classifier: model_factory.KerasArtifacts,
) -> None:
    """The result is a full-int8 model; int8 accuracy (on TFLM) tracks float accuracy."""
    progress: list[tuple[float, str]] = []
    result = convert_keras_to_int8(
        dense_classifier.model_path,
        dense_classifier.data_path,
        on_progress=lambda fraction, message: progress.append((fraction, message)),
    )

    info = inspect_model(result.tflite_bytes)
    assert info.ops == ["FULLY_CONNECTED", "SOFTMAX"]
    assert [t.dtype for t in info.inputs + info.outputs] == ["INT8", "INT8"]
    assert result.representative_samples == 300
    assert result.evaluated_samples == len(dense_classifier.x)
    assert result.float_accuracy is not None and result.float_accuracy > 0.95
    assert result.int8_accuracy is not None
    assert abs(result.int8_accuracy - result.float_accuracy) <= 0.02
    assert result.int8_interpreter == "tflm"
    (inp,) = result.input_quantization
    assert (inp.dtype, inp.shape, inp.zero_point) == ("INT8", [1, 16], -128)
    assert inp.scale is not None and 0 < inp.scale <= 1 / 255  # the data lies in [0, 1]

    fractions = [f for f, _ in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert any("calibrating" in m for _, m in progress)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["model_bytes"] == len(result.tflite_bytes) and len(data["sha256"]) == 64


@pytest.mark.slow
def test_npy_without_labels_converts_without_accuracy(
    dense_classifier: model_factory.KerasArtifacts, tmp_path: Path
) -> None:
    """An .npy gives only the representative set: no accuracy is computed."""
    path = tmp_path / "x.npy"
    np.save(path, dense_classifier.x[:50])
    result = convert_keras_to_int8(dense_classifier.model_path, path)
    assert result.representative_samples == 50
    assert (result.float_accuracy, result.int8_accuracy, result.evaluated_samples) == (
        None,
        None,
        0,
    )
    assert result.int8_interpreter is None


def test_data_of_the_wrong_shape_is_refused(
    dense_classifier: model_factory.KerasArtifacts,
) -> None:
    """Samples that do not match the model's input raise ConversionError(bad_data)."""
    with pytest.raises(ConversionError) as err:
        convert_keras_to_int8(dense_classifier.model_path, {"x": np.zeros((10, 8), np.float32)})
    assert err.value.reason == "bad_data"
    assert "(8,)" in str(err.value) and "(16,)" in str(err.value)


def test_labels_must_match_samples(tmp_path: Path) -> None:
    """A label count that differs from the sample count is refused before TensorFlow loads."""
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((10, 16), np.float32), y=np.zeros(9))
    with pytest.raises(ConversionError, match="10 samples but 9 labels"):
        convert_keras_to_int8(tmp_path / "unused.keras", path)


def test_not_a_keras_file_is_refused(tmp_path: Path) -> None:
    """A file Keras cannot load raises ConversionError(bad_model)."""
    model = tmp_path / "model.keras"
    model.write_bytes(b"not a zip")
    with pytest.raises(ConversionError) as err:
        convert_keras_to_int8(model, {"x": np.zeros((4, 16), np.float32)})
    assert err.value.reason == "bad_model"


def test_library_imports_neither_tensorflow_nor_django() -> None:
    """Importing validation and conversion leaves TensorFlow and Django unloaded."""
    code = (
        "import sys, ota.conversion.keras_to_tflite, ota.validation.admission; "
        "print(sorted(m for m in ('tensorflow', 'django', 'keras') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
