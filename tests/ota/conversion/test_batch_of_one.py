"""Conversion produces MCU-ready graphs: a fixed batch of 1, so a Flatten is one RESHAPE; and
the validation report of an uploaded .tflite names the ops only a dynamic batch brought in.

Before, a small keyword-spotting CNN ending Flatten -> Dense came out of the conversion with
SHAPE, STRIDED_SLICE and PACK (run-time shape arithmetic for a batch the device never has),
and an uploaded model converted that way passed admission without a word about them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from ota.conversion.keras_to_tflite import convert_keras_to_int8
from ota.validation.inspect import inspect_model
from testkit import model_factory

pytestmark = pytest.mark.slow  # TensorFlow
SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK"}


@pytest.fixture(scope="module")
def kws_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """A small keyword-spotting CNN on 49x10 MFCCs ending Flatten -> Dense, with data."""
    tf = model_factory._tf()
    model = tf.keras.Sequential([
        tf.keras.Input((49, 10, 1)),
        tf.keras.layers.Conv2D(8, (10, 4), strides=(2, 2), activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(4, activation="softmax"),
    ])  # fmt: skip
    folder = tmp_path_factory.mktemp("kws")
    x = np.random.default_rng(3).random((64, 49, 10, 1), dtype=np.float32)
    y = np.arange(64) % 4
    model.save(folder / "kws.keras")
    np.savez(folder / "kws.npz", x=x, y=y)
    return model, folder / "kws.keras", folder / "kws.npz"


def test_conversion_fixes_the_batch_so_flatten_is_one_reshape(kws_cnn: Any) -> None:
    _, keras_path, data_path = kws_cnn
    result = convert_keras_to_int8(keras_path, data_path, max_eval=16)
    inspection = inspect_model(result.tflite_bytes)
    ops = [op.op for op in inspection.subgraphs[0].operators]
    assert not SHAPE_OPS & set(ops), ops
    assert ops.count("RESHAPE") == 1
    assert set(ops) == {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
    assert inspection.inputs[0].shape_signature == [1, 49, 10, 1]
    assert inspection.dynamic_batch_ops == [] and inspection.dynamic_batch_advice == ""


def test_inspection_names_the_ops_a_dynamic_batch_brought_in(kws_cnn: Any) -> None:
    model, _, _ = kws_cnn
    dynamic = model_factory.to_int8(model, np.random.default_rng(1).random(
        (16, 49, 10, 1), dtype=np.float32))
    inspection = inspect_model(dynamic)
    assert SHAPE_OPS <= set(inspection.ops)  # what the standard conversion leaves
    assert set(inspection.dynamic_batch_ops) == SHAPE_OPS
    assert "RESHAPE" not in inspection.dynamic_batch_ops  # the Flatten itself stays
    assert "fixed batch of 1" in inspection.dynamic_batch_advice
    assert all(op in inspection.dynamic_batch_advice for op in SHAPE_OPS)


@pytest.mark.django_db
def test_the_upload_report_names_them_and_how_to_avoid_them(
    kws_cnn: Any, operator_client: APIClient, hardware_profile: Any,
) -> None:
    model, _, _ = kws_cnn
    dynamic = model_factory.to_int8(model, np.random.default_rng(1).random(
        (16, 49, 10, 1), dtype=np.float32))
    operator_client.post("/api/v1/models/", {"name": "kws"}, format="json")
    response = operator_client.post("/api/v1/model-versions/", {
        "model": "kws", "version": "1.0.0", "file": SimpleUploadedFile("kws.tflite", dynamic)},
        format="multipart")
    assert response.status_code == 201
    inspection = response.json()["validation"]["inspection"]
    assert set(inspection["dynamic_batch_ops"]) == SHAPE_OPS
    assert "tf.keras.Input(batch_shape=(1, ...))" in inspection["dynamic_batch_advice"]
