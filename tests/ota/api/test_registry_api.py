"""Registry through the API: upload, admission report, packages, manifest bytes, keys."""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from device_sdk.protocol.cose import parse_sign1
from device_sdk.protocol.manifest import Manifest, verify_manifest
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer import TransferDecoder
from device_sdk.protocol.transfer.decoder import bytes_reader
from fleet.audit.models import AuditLog
from ota.models import ModelVersion
from testkit.model_factory import tweak_weight
from tests.conftest import post_enroll

pytestmark = pytest.mark.django_db


def make_model(client: APIClient, name: str = "kws") -> None:
    response = client.post("/api/v1/models/", {"name": name, "labels": ["a", "b", "c", "d"]},
                           format="json")
    assert response.status_code == 201, response.json()


def upload(client: APIClient, data: bytes, version: str, model: str = "kws", **files: Any) -> Any:
    body = {"model": model, "version": version,
            "file": SimpleUploadedFile("m.tflite", data), **files}
    return client.post("/api/v1/model-versions/", body, format="multipart")


def compat(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["hardware_profile"]: c for c in body["compatibility"]}


def trusted(client: APIClient) -> dict[bytes, Ed25519PublicKey]:
    keys = client.get("/api/v1/signing-keys/").json()["results"]
    return {bytes.fromhex(k["kid"]): Ed25519PublicKey.from_public_bytes(bytes.fromhex(k["public_key"]))
            for k in keys if k["state"] in ("active", "pending")}


def test_upload_validates_against_every_profile(operator_client: APIClient, hardware_profile: Any,
                                                dense_tflite: bytes) -> None:
    make_model(operator_client)
    response = upload(operator_client, dense_tflite, "1.0.0")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "ready"
    assert body["sha256"] == hashlib.sha256(dense_tflite).hexdigest()
    assert set(body["validation"]["ops"]) >= {"FULLY_CONNECTED"}
    assert body["validation"]["arena_bytes_host"] > 0
    verdicts = compat(body)
    assert set(verdicts) == {"arduino-nano-33-ble-sense", "esp32-s3", "stm32f746",
                             "qemu-mps2-an385", "qemu-mps2-an386"}
    assert all(v["compatible"] for v in verdicts.values())
    assert AuditLog.objects.filter(action="model_version.validate").exists()


def test_model_with_op_tflm_lacks_is_refused_naming_it(operator_client: APIClient,
                                                       hardware_profile: Any,
                                                       topk_tflite: bytes) -> None:
    make_model(operator_client)
    body = upload(operator_client, topk_tflite, "1.0.0").json()
    assert body["status"] == "invalid"
    reasons = [r for c in body["compatibility"] for r in c["reasons"]]
    assert any("TOPK_V2" in r["message"] for r in reasons)


def test_arena_too_big_for_a_profile_names_the_missing_bytes(
    operator_client: APIClient, hardware_profile: Any, big_arena_tflite: bytes
) -> None:
    make_model(operator_client)
    body = upload(operator_client, big_arena_tflite, "1.0.0").json()
    verdict = compat(body)["arduino-nano-33-ble-sense"]  # 160 KB arena
    assert verdict["compatible"] is False
    arena = [r for r in verdict["reasons"] if r["code"] == "arena_too_small"]
    assert arena and "bytes" in arena[0]["message"]
    assert compat(body)["esp32-s3"]["compatible"] is True  # 320 KB arena


def test_versions_are_immutable_and_garbage_is_refused(operator_client: APIClient,
                                                       hardware_profile: Any,
                                                       dense_tflite: bytes) -> None:
    make_model(operator_client)
    assert upload(operator_client, dense_tflite, "1.0.0").status_code == 201
    again = upload(operator_client, dense_tflite, "1.0.0")
    assert (again.status_code, again.json()["reason"]) == (409, "version_exists")
    garbage = upload(operator_client, b"\x00garbage" * 100, "1.0.1")
    assert (garbage.status_code, garbage.json()["reason"]) == (400, "invalid_model")
    bad = upload(operator_client, dense_tflite, "v1")
    assert (bad.status_code, bad.json()["reason"]) == (400, "bad_version")
    assert ModelVersion.objects.count() == 1


def test_package_round_trip_and_manifest_bytes(operator_client: APIClient, hardware_profile: Any,
                                               dense_tflite: bytes) -> None:
    """Package -> raw COSE from the API -> device-side verify -> stream decode -> same bytes."""
    make_model(operator_client)
    mv = upload(operator_client, dense_tflite, "1.0.0").json()
    response = operator_client.post("/api/v1/packages/", {
        "model_version": mv["id"], "hardware_profile": "stm32f746"}, format="json")
    assert response.status_code == 201, response.json()
    package = response.json()
    raw = operator_client.get(f"/api/v1/packages/{package['id']}/manifest/")
    assert raw.status_code == 200
    assert raw["Content-Type"] == "application/cose"
    manifest = verify_manifest(raw.content, trusted_keys=trusted(operator_client),
                               current_sequence=0, hardware_profile="stm32f746",
                               now=int(time.time()))
    assert manifest.package_id == package["id"]
    assert manifest.model_sha256.hex() == mv["sha256"]
    assert manifest.arena_bytes > 0
    from ota.registry.storage import artifact_storage

    transfer = artifact_storage().get(package["transfer_sha256"])
    decoder = TransferDecoder(manifest)
    out = b"".join(decoder.feed(transfer[i:i + 700]) for i in range(0, len(transfer), 700))
    out += decoder.finish()
    assert hashlib.sha256(out).digest() == manifest.model_sha256
    assert out == dense_tflite
    # the device refuses the same manifest for another board, and a replay
    for kwargs, reason in ((dict(hardware_profile="esp32-s3", current_sequence=0),
                            Reason.MANIFEST_WRONG_HARDWARE),
                           (dict(hardware_profile="stm32f746", current_sequence=manifest.sequence),
                            Reason.MANIFEST_SEQUENCE_REPLAY)):
        with pytest.raises(ProtocolError) as refused:
            verify_manifest(raw.content, trusted_keys=trusted(operator_client),
                            now=int(time.time()), **kwargs)
        assert refused.value.reason == reason


def test_packaging_refuses_an_incompatible_pair(operator_client: APIClient, hardware_profile: Any,
                                                big_arena_tflite: bytes) -> None:
    make_model(operator_client)
    mv = upload(operator_client, big_arena_tflite, "1.0.0").json()
    response = operator_client.post("/api/v1/packages/", {
        "model_version": mv["id"], "hardware_profile": "arduino-nano-33-ble-sense"},
        format="json")
    assert (response.status_code, response.json()["reason"]) == (409, "incompatible")
    assert "arena" in response.json()["detail"]


def test_delta_package_from_base_version(operator_client: APIClient, hardware_profile: Any,
                                         dense_tflite: bytes) -> None:
    """A delta is built against the base and decodes, against the base, to the new version."""
    from ota.registry.storage import artifact_storage

    make_model(operator_client)
    v1 = upload(operator_client, dense_tflite, "1.0.0").json()
    changed = tweak_weight(dense_tflite)  # same structure, one weight byte different
    v2 = upload(operator_client, changed, "1.1.0").json()
    assert v2["status"] == "ready"
    response = operator_client.post("/api/v1/packages/", {
        "model_version": v2["id"], "hardware_profile": "esp32-s3", "base_version": v1["id"],
        "encoding": "delta"}, format="json")
    assert response.status_code == 201, response.json()
    package = response.json()
    assert package["encoding"] == "delta"
    assert package["transfer_size"] < len(dense_tflite) // 4
    raw = operator_client.get(f"/api/v1/packages/{package['id']}/manifest/").content
    manifest = Manifest.decode(parse_sign1(raw).payload)
    decoder = TransferDecoder(manifest, base_reader=bytes_reader(dense_tflite))
    out = decoder.feed(artifact_storage().get(package["transfer_sha256"])) + decoder.finish()
    assert out == changed


def test_rotation_is_published_and_verifiable(admin_client: APIClient, operator_client: APIClient,
                                              hardware_profile: Any, dense_tflite: bytes) -> None:
    from device_sdk.protocol.trust import apply_rotation

    make_model(operator_client)
    mv = upload(operator_client, dense_tflite, "1.0.0").json()
    operator_client.post("/api/v1/packages/", {"model_version": mv["id"],
                                               "hardware_profile": "stm32f746"}, format="json")
    old = trusted(admin_client)
    assert len(old) == 1
    rotated = admin_client.post("/api/v1/signing-keys/rotate/")
    assert rotated.status_code == 201
    record = bytes.fromhex(rotated.json()["rotation_record"])
    now_trusted = apply_rotation(record, old, current_sequence=0)
    assert bytes.fromhex(rotated.json()["kid"]) in now_trusted
    assert len(trusted(admin_client)) == 2
    assert rotated.json()["state"] == "pending"  # trusted by devices, signing nothing yet
    activated = admin_client.post(f"/api/v1/signing-keys/{rotated.json()['kid']}/activate/")
    assert activated.status_code == 200 and activated.json()["state"] == "active"
    old_kid = next(iter(old)).hex()
    assert admin_client.post(f"/api/v1/signing-keys/{old_kid}/retire/").status_code == 200
    last = admin_client.post(f"/api/v1/signing-keys/{rotated.json()['kid']}/retire/")
    assert (last.status_code, last.json()["reason"]) == (409, "last_key")


def test_rotation_stops_where_devices_would_refuse_it(admin_client: APIClient) -> None:
    """Devices keep at most two keys learnt by rotation: a third rotation with both still
    trusted is refused (409) until the operator retires one, and every record the server did
    publish is accepted by a device enrolled before the first rotation."""
    from device_sdk.protocol.trust import TrustState
    from ota.signing.actions import ensure_signing_key, trust_bundle

    first = ensure_signing_key()
    device = TrustState(trusted(admin_client))  # enrolled before any rotation
    kids = []
    for _ in range(2):  # rotate and activate, retiring nothing
        rotated = admin_client.post("/api/v1/signing-keys/rotate/")
        assert rotated.status_code == 201
        kids.append(rotated.json()["kid"])
        assert admin_client.post(f"/api/v1/signing-keys/{kids[-1]}/activate/",
                                 {"force": True}, format="json").status_code == 200
    refused = admin_client.post("/api/v1/signing-keys/rotate/")
    assert (refused.status_code, refused.json()["reason"]) == (409, "too_many_rotated_keys")
    assert kids[0] in refused.json()["detail"]
    # Retiring the enrolled key frees no slot on the device: still refused.
    assert admin_client.post(f"/api/v1/signing-keys/{first.kid}/retire/").status_code == 200
    assert admin_client.post("/api/v1/signing-keys/rotate/").status_code == 409
    assert admin_client.post(f"/api/v1/signing-keys/{kids[0]}/retire/").status_code == 200
    third = admin_client.post("/api/v1/signing-keys/rotate/")
    assert third.status_code == 201
    device, errors = device.apply_bundle(trust_bundle())
    assert errors == []
    assert set(device.keys) == {bytes.fromhex(kids[1]), bytes.fromhex(third.json()["kid"])}


def test_enrollment_publishes_the_active_signing_keys(operator_client: APIClient,
                                                      enroll_body: dict[str, Any],
                                                      dense_tflite: bytes) -> None:
    from ota.signing.actions import ensure_signing_key

    key = ensure_signing_key()
    body = post_enroll(enroll_body).json()
    assert body["signing_keys"] == [{"kid": key.kid, "public_key": key.public_key}]


def test_keras_conversion_job_reports_progress_and_accuracy(
    operator_client: APIClient, hardware_profile: Any, dense_classifier: Any
) -> None:
    """A .keras + data upload is queued (202), a worker converts it, the report follows."""
    from ota.jobs.conversion import run_pending_jobs

    make_model(operator_client)
    keras = dense_classifier.model_path.read_bytes()
    buf = io.BytesIO()
    np.savez(buf, x=dense_classifier.x, y=dense_classifier.y)
    response = operator_client.post("/api/v1/model-versions/", {
        "model": "kws", "version": "2.0.0", "keras": SimpleUploadedFile("m.keras", keras),
        "dataset": SimpleUploadedFile("d.npz", buf.getvalue())}, format="multipart")
    assert response.status_code == 202, response.json()
    assert response.json()["status"] == "converting"
    assert response.json()["conversion"]["state"] == "queued"
    assert run_pending_jobs("test-worker") == 1
    body = operator_client.get(f"/api/v1/model-versions/{response.json()['id']}/").json()
    assert body["conversion"]["state"] == "done"
    assert body["conversion"]["progress"] == 1.0
    assert body["status"] == "ready"
    assert body["metrics"]["float_accuracy"] > 0.8
    assert abs(body["metrics"]["int8_accuracy"] - body["metrics"]["float_accuracy"]) < 0.05
