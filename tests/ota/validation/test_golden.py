"""Admission computes the golden-trial expectations per kernel set; packages carry them (key 15)."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import pytest
from rest_framework.test import APIClient

from device_sdk.ota.trial import run_trial
from device_sdk.protocol.golden import OutputType, outputs_digest
from device_sdk.protocol.manifest import verify_manifest
from ota.validation.admission import ProfileSpec, validate_model
from ota.validation.golden import (
    UNMEASURED_LABEL_TOLERANCE,
    measure_outputs_on_target,
    register_outputs_measurer,
    trial_expectation,
    trial_spec_for,
)
from ota.validation.targets import QemuOutputsMeasurer

GOLDEN = {"applicable": True, "n": 3, "input_bytes": 16, "output_type": 0,
          "labels": [1, 0, 3], "outputs_sha256": "ab" * 32}
OPS = ["CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "QUANTIZE",
       "DEQUANTIZE"]


def test_reference_kernels_get_labels_and_digest_exactly() -> None:
    """Host reference kernels are bit-identical to the device's: digest, no tolerance."""
    t = trial_expectation(GOLDEN, "reference")
    assert t is not None and t.source == "host-reference"
    spec = t.spec()
    assert spec.labels == (1, 0, 3) and spec.outputs_sha256 == bytes.fromhex("ab" * 32)
    assert spec.max_label_mismatches == 0 and spec.output_type == OutputType.INT8


def test_unmeasured_kernel_sets_get_labels_only() -> None:
    """CMSIS-NN / ESP-NN without a measurement: no digest, a small label tolerance."""
    t = trial_expectation(GOLDEN, "cmsis-nn")
    assert t is not None and t.source == "host-labels-only"
    assert t.outputs_sha256 is None and t.max_label_mismatches == UNMEASURED_LABEL_TOLERANCE


def test_measured_outputs_give_labels_and_digest_for_that_kernel_set() -> None:
    """A measurement for the kernel set replaces the host's figures."""
    outs = [bytes([0, 9, 1]), bytes([7, 0, 0]), bytes([0, 0, 5])]
    t = trial_expectation(GOLDEN, "esp-nn", measured=outs)
    assert t is not None and t.source == "measured"
    assert t.labels == [1, 0, 2] and t.outputs_sha256 == outputs_digest(outs).hex()
    assert t.max_label_mismatches == 0


def test_not_applicable_models_get_no_key_15() -> None:
    """Float or multi-input models: nothing, so packages fall back to the legacy trial."""
    assert trial_expectation({"applicable": False, "why": "float32"}, "reference") is None
    assert trial_expectation(None, "reference") is None
    assert trial_spec_for({"trial": {}}, "p") is None and trial_spec_for(None, "p") is None


def test_the_measurement_seam_is_empty_by_default_and_tolerates_failures() -> None:
    """Nothing registered: None. A raising or short measurer counts as unmeasured."""
    assert measure_outputs_on_target(b"m", "cmsis-nn", 3) is None

    def broken(model: bytes, kernel_set: str, n: int) -> list[bytes]:
        raise RuntimeError("qemu died")

    try:
        register_outputs_measurer("cmsis-nn", broken)
        assert measure_outputs_on_target(b"m", "cmsis-nn", 3) is None
        register_outputs_measurer("cmsis-nn", lambda m, k, n: [b"\x01"] * (n - 1))
        assert measure_outputs_on_target(b"m", "cmsis-nn", 3) is None
        register_outputs_measurer("cmsis-nn", lambda m, k, n: [b"\x01"] * n)
        assert measure_outputs_on_target(b"m", "cmsis-nn", 3) == [b"\x01"] * 3
    finally:
        register_outputs_measurer("cmsis-nn", None)


@pytest.mark.slow
def test_admission_expectations_confirm_the_model_on_the_device(conv_tflite: bytes) -> None:
    """What the probe child computed is what the SDK trial sees: genuine passes, tweak fails."""
    seen: list[str] = []

    def measure(model: bytes, kernel_set: str, n: int) -> list[bytes] | None:
        seen.append(kernel_set)
        return None

    profiles = [ProfileSpec("ref", 1 << 20, 1 << 20, 32, OPS, "reference"),
                ProfileSpec("cm", 1 << 20, 1 << 20, 32, OPS, "cmsis-nn"),
                ProfileSpec("cm2", 1 << 20, 1 << 20, 32, OPS, "cmsis-nn")]
    report = validate_model(conv_tflite, profiles, measure=measure)
    assert seen == ["cmsis-nn"]  # one measurement per kernel set
    assert report.probe.golden and report.probe.golden["applicable"]
    stored = report.to_dict()
    ref, cm = trial_spec_for(stored, "ref"), trial_spec_for(stored, "cm")
    assert ref is not None and ref.n == 8 and ref.outputs_sha256 is not None
    assert cm is not None and cm.outputs_sha256 is None and cm.labels == ref.labels
    arena = 256 * 1024
    assert run_trial(conv_tflite, arena_bytes=arena, spec=ref).passed
    assert run_trial(conv_tflite, arena_bytes=arena, spec=cm).passed


@pytest.mark.slow
@pytest.mark.django_db
def test_packages_carry_key_15_for_their_profiles_kernel_set(
    operator_client: APIClient, hardware_profile: Any, dense_tflite: bytes
) -> None:
    """qemu-mps2-an385 (reference): the host's labels + digest; stm32f746 (cmsis-nn): labels
    + digest of CMSIS-NN's own outputs, measured on the M4 probe in QEMU (registered by
    ota.apps), or the host's labels only when QEMU cannot run here (never in CI)."""
    from tests.ota.api.test_registry_api import make_model, trusted, upload

    make_model(operator_client)
    mv = upload(operator_client, dense_tflite, "1.0.0").json()
    assert set(mv["validation"]["trial"]) >= {"qemu-mps2-an385", "stm32f746"}
    specs = {}
    for profile in ("qemu-mps2-an385", "stm32f746"):
        response = operator_client.post("/api/v1/packages/", {
            "model_version": mv["id"], "hardware_profile": profile}, format="json")
        assert response.status_code == 201, response.json()
        raw = operator_client.get(f"/api/v1/packages/{response.json()['id']}/manifest/").content
        manifest = verify_manifest(raw, trusted_keys=trusted(operator_client),
                                   current_sequence=0, hardware_profile=profile,
                                   now=int(time.time()))
        assert manifest.trial is not None
        specs[profile] = manifest.trial
    assert specs["qemu-mps2-an385"].outputs_sha256 is not None
    assert specs["qemu-mps2-an385"].max_label_mismatches == 0
    cmsis = mv["validation"]["trial"]["stm32f746"]
    if os.environ.get("CI", "").lower() == "true" or cmsis["source"] == "measured":
        assert cmsis["source"] == "measured"
        outputs = QemuOutputsMeasurer()(dense_tflite, "cmsis-nn", specs["stm32f746"].n)
        assert outputs is not None
        assert specs["stm32f746"].outputs_sha256 == outputs_digest(outputs)
        assert specs["stm32f746"].max_label_mismatches == 0
    else:
        assert specs["stm32f746"].outputs_sha256 is None
    assert specs["stm32f746"].labels == specs["qemu-mps2-an385"].labels
    assert mv["sha256"] == hashlib.sha256(dense_tflite).hexdigest()
    assert run_trial(dense_tflite, arena_bytes=256 * 1024, spec=specs["qemu-mps2-an385"]).passed
