"""Session fixtures: real models built once per test run (TensorFlow is slow to import)."""

from __future__ import annotations

import pytest

from testkit import model_factory


@pytest.fixture(scope="session")
def dense_classifier(tmp_path_factory: pytest.TempPathFactory) -> model_factory.KerasArtifacts:
    """A trained 16-32-4 MLP as .keras, its data set, and its int8 .tflite."""
    return model_factory.dense_classifier(tmp_path_factory.mktemp("dense"))


@pytest.fixture(scope="session")
def dense_tflite(dense_classifier: model_factory.KerasArtifacts) -> bytes:
    """The int8 MLP (FULLY_CONNECTED, SOFTMAX), about 3 KB."""
    return dense_classifier.tflite


@pytest.fixture(scope="session")
def conv_tflite() -> bytes:
    """A small int8 CNN, about 5 KB."""
    return model_factory.conv_model()


@pytest.fixture(scope="session")
def topk_tflite() -> bytes:
    """A model using TOPK_V2, an op TFLM has no kernel for."""
    return model_factory.topk_model()


@pytest.fixture(scope="session")
def big_arena_tflite() -> bytes:
    """A small model (~9 KB) that needs ~200 KB of arena."""
    return model_factory.big_arena_model()
