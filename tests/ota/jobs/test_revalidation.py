"""Admission stays current: creating or editing a hardware profile re-validates every version.

Before: a profile added after a version was validated had no admission result for it, so
building that version's package for the new profile answered 409 "has no admission result".
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from ota.choices import JobState
from ota.jobs.revalidation import run_pending_revalidations
from ota.models import RevalidationJob

pytestmark = pytest.mark.django_db

BOARD = {"name": "late-board", "mcu": "M4", "ram_bytes": 262144, "flash_bytes": 1048576,
         "arena_ram_bytes": 131072, "model_slot_bytes": 524288, "kernel_set": "reference",
         "pointer_bits": 32, "supported_ops": ["FULLY_CONNECTED", "SOFTMAX", "RESHAPE",
                                               "QUANTIZE", "DEQUANTIZE"]}


def _version(client: APIClient, data: bytes) -> dict[str, Any]:
    assert client.post("/api/v1/models/", {"name": "kws"}, format="json").status_code == 201
    response = client.post("/api/v1/model-versions/", {
        "model": "kws", "version": "1.0.0", "file": SimpleUploadedFile("m.tflite", data)},
        format="multipart")
    assert response.status_code == 201 and response.json()["status"] == "ready"
    return response.json()


def test_a_profile_created_later_gets_verdicts_and_packages(
    operator_client: APIClient, admin_client: APIClient, hardware_profile: Any,
    dense_tflite: bytes, django_capture_on_commit_callbacks: Any,
) -> None:
    mv = _version(operator_client, dense_tflite)
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post("/api/v1/hardware-profiles/", BOARD,
                                 format="json").status_code == 201
    jobs = admin_client.get("/api/v1/revalidation-jobs/?hardware_profile__name=late-board").json()
    job = jobs["results"][0]
    assert (job["state"], job["total"], job["done"]) == ("queued", 1, 0)

    assert run_pending_revalidations("worker-1") == 1
    job = admin_client.get(f"/api/v1/revalidation-jobs/{job['id']}/").json()
    assert (job["state"], job["done"], job["progress"]) == ("done", 1, 1.0)
    detail = operator_client.get(f"/api/v1/model-versions/{mv['id']}/").json()
    assert "late-board" in detail["validation"]["compatible_profiles"]
    response = operator_client.post("/api/v1/packages/", {
        "model_version": mv["id"], "hardware_profile": "late-board"}, format="json")
    assert response.status_code == 201, response.json()


def test_editing_a_profile_renews_the_verdicts(
    operator_client: APIClient, admin_client: APIClient, hardware_profile: Any,
    dense_tflite: bytes, django_capture_on_commit_callbacks: Any,
) -> None:
    """A profile shrunk below the model's arena no longer fits it once re-validated."""
    mv = _version(operator_client, dense_tflite)
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/api/v1/hardware-profiles/", BOARD, format="json")
    run_pending_revalidations("worker-1")
    profile_id = admin_client.get("/api/v1/hardware-profiles/?name=late-board").json()[
        "results"][0]["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.patch(f"/api/v1/hardware-profiles/{profile_id}/",
                                      {"arena_ram_bytes": 512}, format="json")
    assert response.status_code == 200, response.json()
    run_pending_revalidations("worker-1")
    response = operator_client.post("/api/v1/packages/", {
        "model_version": mv["id"], "hardware_profile": "late-board"}, format="json")
    assert response.status_code == 409 and "arena" in response.json()["detail"]


def test_revalidate_endpoint_queues_one_version_once(
    operator_client: APIClient, hardware_profile: Any, dense_tflite: bytes,
) -> None:
    mv = _version(operator_client, dense_tflite)
    first = operator_client.post(f"/api/v1/model-versions/{mv['id']}/revalidate/")
    again = operator_client.post(f"/api/v1/model-versions/{mv['id']}/revalidate/")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]  # coalesced while queued
    assert first.json()["model_version"] == mv["id"] and first.json()["total"] == 1
    assert run_pending_revalidations("worker-1") == 1
    assert RevalidationJob.objects.get().state == JobState.DONE


def test_the_console_profile_page_shows_the_revalidation_progress(
    operator_client: APIClient, client: Any, hardware_profile: Any, dense_tflite: bytes,
    django_capture_on_commit_callbacks: Any, user_factory: Any,
) -> None:
    from fleet.core.roles import Role

    _version(operator_client, dense_tflite)
    client.force_login(user_factory(Role.ADMIN))
    body = {**BOARD, "supported_ops": "\n".join(BOARD["supported_ops"]), "ota_chunk_bytes": 1024}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/console/hardware-profiles/new/", body)
    assert response.status_code == 302, response.content.decode()[:2000]
    page = client.get("/console/hardware-profiles/late-board/").content.decode()
    assert 'data-state="queued"' in page and "0 of 1</span> versions checked" in page
    run_pending_revalidations("worker-1")
    page = client.get("/console/hardware-profiles/late-board/").content.decode()
    assert 'data-state="done"' in page and "Every version was re-validated" in page
