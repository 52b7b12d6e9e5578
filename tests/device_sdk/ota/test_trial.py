"""The device trial judges a new model by golden inputs (manifest key 15) and reverts a wrong one.

A model that loads and runs but computes something else (same architecture, other weights,
shipped with the original's expectations; or genuine bytes with tampered expectations signed
by the fleet key) is reverted with TRIAL_OUTPUT_MISMATCH; the genuine one confirms.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from device_sdk.inference import TflmModel
from device_sdk.ota.agent import OtaAgent
from device_sdk.ota.slots import SlotStore
from device_sdk.ota.trial import golden_outputs, run_trial
from device_sdk.ota.updater import OtaUpdater
from device_sdk.protocol.cose import key_id, raw_public_key
from device_sdk.protocol.golden import OutputType, outputs_digest, top1_label
from device_sdk.protocol.manifest import Encoding, Manifest, TrialSpec, sign_manifest
from device_sdk.protocol.ota_messages import DeploymentState, decode_report
from device_sdk.protocol.reasons import Reason

pytestmark = pytest.mark.slow  # builds a real int8 model with TensorFlow (once per session)

KEY = Ed25519PrivateKey.generate()
PROFILE = "esp32-s3"
ARENA = 256 * 1024


def other_weights(tflite: bytes) -> bytes:
    """Return the model with its largest weight buffer reversed: same ops and shapes."""
    model = schema.Model.GetRootAs(tflite, 0)
    largest = max((model.Buffers(i).DataAsNumpy().tobytes()
                   for i in range(model.BuffersLength()) if model.Buffers(i).DataLength()),
                  key=len)
    start = tflite.find(largest)
    assert start >= 0 and largest != largest[::-1]
    return tflite[:start] + largest[::-1] + tflite[start + len(largest):]


def expectations(model: bytes, n: int = 8) -> TrialSpec:
    """Return key 15 for ``model`` as the server computes it (host reference kernels)."""
    outs = golden_outputs(TflmModel(model, arena_bytes=ARENA), n)
    return TrialSpec(tuple(top1_label(o, OutputType.INT8) for o in outs), 0,
                     outputs_digest(outs), OutputType.INT8)


def package(model: bytes, seq: int, trial: TrialSpec | None) -> bytes:
    digest = hashlib.sha256(model).digest()
    return sign_manifest(Manifest(
        sequence=seq, model_name="m", model_version=f"1.{seq}.0", hardware_profile=PROFILE,
        model_sha256=digest, model_size=len(model), encoding=Encoding.RAW,
        transfer_sha256=digest, transfer_size=len(model), arena_bytes=1000,
        expires_at=int(time.time()) + 3600, package_id=seq, trial=trial), KEY)


def device(tmp: Path, factory: bytes) -> OtaUpdater:
    store = SlotStore(tmp)
    store.install_factory(factory, package=0)
    updater = OtaUpdater(store, hardware=PROFILE, slot_bytes=1 << 20, arena_bytes=ARENA)
    updater.trust({key_id(KEY.public_key()).hex(): raw_public_key(KEY.public_key()).hex()})
    return updater


def download(updater: OtaUpdater, cose: bytes, model: bytes) -> None:
    updater.offer(cose)
    while (wanted := updater.wanted()) is not None:
        pkg, offset, length = wanted
        assert updater.on_chunk(pkg, offset, model[offset:offset + length])


class FakeClient:
    """What OtaAgent._install touches of a DeviceClient: reports are collected."""

    uid = "dev-1"

    def __init__(self) -> None:
        self.on_message: Any = None
        self.on_connect: Any = None
        self.reports: list[tuple[int, int, int]] = []
        self.model: int | None = None

    def publish(self, channel: object, payload: bytes) -> None:
        r = decode_report(payload)
        self.reports.append((r.pkg, int(r.state), int(r.detail)))

    def set_model(self, pkg: int, manifest_seq: int = 0) -> None:
        self.model = pkg


def install_through_agent(tmp: Path, factory: bytes, model: bytes,
                          trial: TrialSpec | None) -> tuple[FakeClient, OtaUpdater]:
    """Download, install and judge ``model`` as the device's OTA agent does."""
    updater = device(tmp, factory)
    client = FakeClient()
    agent = OtaAgent(client, updater,  # type: ignore[arg-type]
                     lambda m, spec: run_trial(m, arena_bytes=ARENA, spec=spec))
    download(updater, package(model, 5, trial), model)
    agent._install(5)
    return client, updater


def test_genuine_model_confirms(tmp_path: Path, conv_model: bytes) -> None:
    """The model the expectations were computed for passes and is confirmed."""
    factory = other_weights(conv_model)
    client, updater = install_through_agent(tmp_path, factory, conv_model,
                                            expectations(conv_model))
    assert client.reports[-1] == (5, int(DeploymentState.CONFIRMED), 0)
    assert updater.store.read_active() == conv_model and not updater.store.meta.trial


def test_other_weights_with_the_originals_expectations_revert(tmp_path: Path,
                                                              conv_model: bytes) -> None:
    """Same architecture, other weights: it loads and runs, and is reverted by its outputs."""
    impostor = other_weights(conv_model)
    assert run_trial(impostor, arena_bytes=ARENA).passed  # the legacy trial cannot tell
    client, updater = install_through_agent(tmp_path, conv_model, impostor,
                                            expectations(conv_model))
    assert client.reports[-1] == (5, int(DeploymentState.FAILED),
                                  int(Reason.TRIAL_OUTPUT_MISMATCH))
    assert updater.store.read_active() == conv_model  # back on the old model
    assert client.model is None


def test_tampered_expectations_signed_by_the_fleet_key_revert(tmp_path: Path,
                                                              conv_model: bytes) -> None:
    """Genuine bytes with labels that cannot be right (no digest) fail on labels alone."""
    right = expectations(conv_model)
    classes = TflmModel(conv_model, arena_bytes=ARENA).num_classes
    wrong = TrialSpec(tuple((v + 1) % classes for v in right.labels), 1, None)
    result = run_trial(conv_model, arena_bytes=ARENA, spec=wrong)
    assert not result.passed and result.reason == Reason.TRIAL_OUTPUT_MISMATCH
    assert "differ" in result.detail
    client, _ = install_through_agent(tmp_path, other_weights(conv_model), conv_model, wrong)
    assert client.reports[-1][2] == Reason.TRIAL_OUTPUT_MISMATCH


def test_label_tolerance_and_digest_are_both_checked(conv_model: bytes) -> None:
    """max_label_mismatches tolerates that many labels; a wrong digest fails even then."""
    right = expectations(conv_model)
    classes = TflmModel(conv_model, arena_bytes=ARENA).num_classes
    one_off = ((right.labels[0] + 1) % classes, *right.labels[1:])
    assert run_trial(conv_model, arena_bytes=ARENA,
                     spec=TrialSpec(one_off, 1, None)).passed
    assert not run_trial(conv_model, arena_bytes=ARENA, spec=TrialSpec(one_off, 0, None)).passed
    bad_digest = TrialSpec(right.labels, 0, hashlib.sha256(b"x").digest())
    assert run_trial(conv_model, arena_bytes=ARENA,
                     spec=bad_digest).reason == Reason.TRIAL_OUTPUT_MISMATCH


def test_without_key_15_the_legacy_trial_runs(tmp_path: Path, conv_model: bytes) -> None:
    """An old package (no key 15) keeps today's behaviour: load, run, confirm."""
    client, _ = install_through_agent(tmp_path, other_weights(conv_model), conv_model, None)
    assert client.reports[-1] == (5, int(DeploymentState.CONFIRMED), 0)
