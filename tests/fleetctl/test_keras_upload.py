"""``fleetctl models upload --keras`` end to end: a small real Keras model and its data set go
to a live server, the real fleet worker (its conversion-job loop) converts it to int8 in a
child process, validation admits it per hardware profile, and fleetctl waits and gates on it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetctl.errors import Exit
from ota.models import ConversionJob, ModelVersion
from ota.registry.storage import artifact_storage
from testkit import model_factory

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> model_factory.KerasArtifacts:
    """The 16-32-4 MLP of the model factory, saved as .keras with its .npz data set."""
    return model_factory.dense_classifier(tmp_path_factory.mktemp("keras"))


@pytest.fixture
def converting_worker(broker: Any, worker_factory: Callable[..., Any]) -> Any:
    """The real ``fleet_worker`` with its job loop on, sharing the test database and artifacts."""
    return worker_factory(broker, jobs=True)


def test_keras_upload_is_converted_validated_and_admitted(
        fleetctl: Callable[..., Any], dense: model_factory.KerasArtifacts,
        hardware_profile: Any, converting_worker: Any) -> None:
    """The upload bar, the conversion progress, then the admission table; exit 0. With --json:
    one document, ready, admitted on the asked profile, the accuracies the conversion
    measured, and the stored .tflite is the int8 model the worker made."""
    up = fleetctl("models", "upload", "--keras", str(dense.model_path), "--dataset",
                  str(dense.data_path), "--model", "kws", "--version", "1.0.0",
                  "--profile", "stm32f746", "--timeout", "300", timeout=400)
    assert up.code == Exit.OK, up.stdout + up.stderr + converting_worker.log()[-3000:]
    assert "upload" in up.stderr
    assert "converted" in up.stderr and "100 %" in up.stderr  # the conversion bar
    assert "Admission per hardware profile" in up.stdout
    assert "kws 1.0.0" in up.stdout and "ready" in up.stdout
    row = next(line for line in up.stdout.splitlines() if "stm32f746" in line)
    assert "fits" in row
    assert f"{converting_worker.name} converting kws@1.0.0" in converting_worker.log()

    shown = fleetctl("--json", "models", "upload", "--keras", str(dense.model_path),
                     "--dataset", str(dense.data_path), "--model", "kws", "--version", "1.0.1",
                     "--profile", "stm32f746", "--timeout", "300", timeout=400)
    assert shown.code == Exit.OK, shown.stderr
    assert shown.stderr == ""
    version = json.loads(shown.stdout)
    assert version["status"] == "ready" and version["admitted"] == {"stm32f746": True}
    assert version["conversion"]["state"] == "done"
    assert version["conversion"]["progress"] == 1.0
    assert version["metrics"]["float_accuracy"] > 0.8
    assert abs(version["metrics"]["int8_accuracy"] - version["metrics"]["float_accuracy"]) < 0.05
    stored = ModelVersion.objects.get(pk=version["id"])
    tflite = artifact_storage().path(stored.sha256).read_bytes()
    assert tflite[4:8] == b"TFL3" and len(tflite) == version["size_bytes"]
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite, 0)
    graph = model.Subgraphs(0)
    input_type = graph.Tensors(graph.Inputs(0)).Type()
    assert input_type == schema.TensorType.INT8  # full-integer, as the MCUs run it
    assert ConversionJob.objects.get(model_version=stored).lease_owner == converting_worker.name


def test_a_keras_file_that_does_not_convert_exits_3_with_the_error(
        fleetctl: Callable[..., Any], tmp_path: Path, hardware_profile: Any,
        converting_worker: Any) -> None:
    """A file that is not a Keras model fails conversion on the worker: exit 3 and the
    conversion error; the version stays failed and never gets a .tflite."""
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"PK\x03\x04 not really a keras archive" * 8)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((8, 16), np.float32), y=np.zeros(8, np.int64))
    up = fleetctl("models", "upload", "--keras", str(bogus), "--dataset", str(data),
                  "--model", "kws", "--version", "9.9.9", "--timeout", "300", timeout=400)
    assert up.code == Exit.NOT_ADMITTED, up.stdout + up.stderr
    assert "is failed" in up.stderr
    version = ModelVersion.objects.get(model__name="kws", version="9.9.9")
    assert version.status == "failed" and version.sha256 == ""
    assert ConversionJob.objects.get(model_version=version).state == "failed"


def test_keras_needs_its_data_set(fleetctl: Callable[..., Any],
                                  dense: model_factory.KerasArtifacts) -> None:
    """Without --dataset nothing is uploaded: a usage error (exit 2)."""
    up = fleetctl("models", "upload", "--keras", str(dense.model_path), "--model", "kws",
                  "--version", "1.0.2")
    assert up.code == Exit.USAGE and "--keras needs --dataset" in up.stderr
    assert not ModelVersion.objects.filter(version="1.0.2").exists()
