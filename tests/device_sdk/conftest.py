"""Session fixtures of the device SDK tests: real int8 models, built once per run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The ota tests' model factory builds small real models with TensorFlow (imported lazily).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ota"))

import model_factory  # noqa: E402


@pytest.fixture(scope="session")
def dense_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A trained int8 16-32-4 MLP (FULLY_CONNECTED, SOFTMAX), about 3.6 KB."""
    return model_factory.dense_classifier(tmp_path_factory.mktemp("sdk-dense")).tflite


@pytest.fixture(scope="session")
def dense_model_path(dense_model: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The int8 MLP as a .tflite file."""
    path = tmp_path_factory.mktemp("sdk-model") / "dense.tflite"
    path.write_bytes(dense_model)
    return path


@pytest.fixture(scope="session")
def conv_model() -> bytes:
    """A small int8 CNN on 32x32x1 inputs with 4 classes (untrained)."""
    return model_factory.conv_model()
