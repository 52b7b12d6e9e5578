"""What the console pages show: fleet figures, filters, keyset paging, reports, charts' data."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from fleet.audit.models import AuditLog
from fleet.devices.choices import DeviceState
from ota.choices import JobState, VersionStatus
from ota.models import ConversionJob, ModelVersion, Package

pytestmark = pytest.mark.django_db

Clients = Callable[[str], Client]


def html(client: Client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.content.decode()


def device_uids(page: str) -> list[str]:
    return re.findall(r'href="/console/devices/([\w-]+)/"', page)


def test_overview_counts_devices_by_state_profile_and_version(client_for: Clients,
                                                              fleet: Any) -> None:
    page = html(client_for("viewer"), "/console/")
    stats = dict(re.findall(r'data-stat="(\w+)">([\d,]+)<', page))
    assert stats == {"total": "8", "online": "4", "offline": "2", "enrolled": "1", "revoked": "1"}
    assert "stm32f746" in page and "esp32-s3" in page
    # Revoked devices do not count as running a version: kws@1.0.0 on a1 and a2 only.
    assert re.search(r'kws@1\.0\.0</a>\s*<span class="num">2 ', page)
    assert re.search(r'kws@1\.1\.0</a>\s*<span class="num">2 ', page)
    assert "worker-1" in page and "running" in page and "silent" in page
    assert "enrollment_token.create" in page  # recent activity
    assert "No rollout is running" in page


@pytest.mark.parametrize(("query", "expected"), [
    ("", ["dev-a1", "dev-a2", "dev-a3", "dev-a4", "dev-b1", "dev-b2", "dev-n1", "dev-r1"]),
    ("state=online", ["dev-a1", "dev-a2", "dev-a3", "dev-b1"]),
    ("state=enrolled", ["dev-n1"]),
    ("group=lab", ["dev-a1", "dev-a2", "dev-b1", "dev-r1"]),
    ("group=lab&tag=north", ["dev-a1", "dev-a2"]),
    ("tag=south", ["dev-a2", "dev-a3"]),
    ("hardware_profile=esp32-s3", ["dev-b1", "dev-b2", "dev-n1"]),
    ("seen=5m", ["dev-a1", "dev-a2", "dev-a3", "dev-b1"]),
    ("seen=stale", ["dev-a4", "dev-b2", "dev-r1"]),
    ("seen=never", ["dev-n1"]),
    ("q=dev-b", ["dev-b1", "dev-b2"]),
    ("q=sensor dev-n", ["dev-n1"]),
])
def test_device_list_filters(client_for: Clients, fleet: Any, query: str,
                             expected: list[str]) -> None:
    assert device_uids(html(client_for("viewer"), f"/console/devices/?{query}")) == expected


def test_device_list_filters_by_running_model_version(client_for: Clients, fleet: Any) -> None:
    page = html(client_for("viewer"), f"/console/devices/?model_version={fleet.v2.pk}")
    assert device_uids(page) == ["dev-a3", "dev-a4"]
    assert "kws@1.1.0" in page


def test_device_list_pages_by_uid_with_a_bounded_number_of_queries(
    client_for: Clients, fleet: Any, django_assert_max_num_queries: Any
) -> None:
    client = client_for("viewer")
    for i in range(117):
        make_device_row(fleet, f"bulk-{i:03d}")
    seen: list[str] = []
    path = "/console/devices/?q=bulk"
    pages = 0
    while path:
        with django_assert_max_num_queries(12):
            page = html(client, path)
        uids = device_uids(page)
        assert len(uids) <= 50 and uids == sorted(uids)
        seen += uids
        pages += 1
        assert "117 devices" in page
        match = re.search(r'href="(\?[^"]*after=[^"]+)" rel="next"|rel="next" href="([^"]+)"',
                          page)
        path = ("/console/devices/" + (match.group(1) or match.group(2))).replace("&amp;", "&") \
            if match else ""
    assert pages == 3 and seen == [f"bulk-{i:03d}" for i in range(117)]
    # Back from the last page lands on the 50 before it.
    last_first = seen[100]
    back = html(client, f"/console/devices/?q=bulk&before={last_first}")
    assert device_uids(back) == seen[50:100]


def make_device_row(fleet: Any, uid: str) -> None:
    from fleet.devices.models import Device

    Device.objects.create(uid=uid, hardware_profile=fleet.profile, state=DeviceState.ONLINE,
                          public_key_pem="-", public_key_fingerprint=uid, key_algorithm="ed25519")


def test_device_detail_shows_status_capabilities_and_telemetry(client_for: Clients,
                                                               fleet: Any) -> None:
    page = html(client_for("viewer"), "/console/devices/dev-a1/")
    assert "kws@1.0.0" in page and "FULLY_CONNECTED" in page and "64.0 KiB" in page
    series = json.loads(re.search(r'<script id="device-series" type="application/json">(.*?)'
                                  r"</script>", page, re.DOTALL).group(1))
    assert sum(p["events"] for p in series) > 0
    assert "silence" in page  # label names come from the running model


def test_unknown_device_is_404(client_for: Clients, fleet: Any) -> None:
    assert client_for("viewer").get("/console/devices/nope/").status_code == 404


def test_models_page_lists_versions_with_profile_fit(client_for: Clients, fleet: Any) -> None:
    page = html(client_for("viewer"), "/console/models/")
    assert "kws" in page and "1.0.0" in page and "1.1.0" in page
    assert "4 / 5 profiles" in page


def test_tflite_upload_validates_and_reports(client_for: Clients, fleet: Any,
                                             sine_tflite: bytes) -> None:
    client = client_for("operator")
    response = client.post("/console/models/upload/", {
        "model": "kws", "version": "2.0.0", "notes": "retrained",
        "file": SimpleUploadedFile("sine.tflite", sine_tflite)})
    mv = ModelVersion.objects.get(model__name="kws", version="2.0.0")
    assert response.headers["Location"] == f"/console/models/versions/{mv.pk}/"
    assert mv.status == VersionStatus.READY
    page = html(client, f"/console/models/versions/{mv.pk}/")
    assert "FULLY_CONNECTED" in page and "measured minimum" in page
    assert page.count('data-profile="') == 5
    assert page.count("data-arena-method") == 5  # how each profile's arena figure was obtained
    assert "serving_default_dense_input:0" in page  # the input tensor


def test_upload_errors_are_shown_on_the_form(client_for: Clients, fleet: Any,
                                             sine_tflite: bytes) -> None:
    client = client_for("operator")
    response = client.post("/console/models/upload/", {
        "model": "kws", "version": "1.0.0", "file": SimpleUploadedFile("m.tflite", sine_tflite)})
    assert response.status_code == 400 and "versions are immutable" in response.content.decode()
    response = client.post("/console/models/upload/", {
        "model": "kws", "version": "3.0.0", "file": SimpleUploadedFile("m.onnx", b"xx")})
    assert "Expected a .tflite file" in response.content.decode()
    response = client.post("/console/models/upload/", {
        "model": "kws", "version": "3.0.0", "file": SimpleUploadedFile("m.tflite", b"garbage!")})
    assert "Not a TFLite model" in response.content.decode()
    response = client.post("/console/models/upload/", {"model": "kws", "version": "3.0.0"})
    assert "Give either a .tflite file" in response.content.decode()


def test_keras_upload_queues_a_conversion_with_a_progress_bar(client_for: Clients,
                                                              fleet: Any) -> None:
    client = client_for("operator")
    response = client.post("/console/models/upload/", {
        "model": "kws", "version": "2.1.0",
        "keras": SimpleUploadedFile("m.keras", b"PK\x03\x04 keras zip"),
        "dataset": SimpleUploadedFile("d.npz", b"PK\x03\x04 npz")})
    mv = ModelVersion.objects.get(version="2.1.0")
    assert mv.status == VersionStatus.CONVERTING
    assert ConversionJob.objects.get(model_version=mv).state == JobState.QUEUED
    page = html(client, response.headers["Location"])
    assert f'data-poll-version="/api/v1/model-versions/{mv.pk}/"' in page
    assert 'role="progressbar"' in page
    assert 'data-poll-version' in html(client, "/console/models/")


def test_create_model_then_refuse_a_duplicate(client_for: Clients, fleet: Any) -> None:
    client = client_for("operator")
    response = client.post("/console/models/new/", {"name": "vww", "labels": "person, none"})
    assert response.headers["Location"] == "/console/models/?model=vww#upload"
    assert AuditLog.objects.filter(action="model.create").exists()
    response = client.post("/console/models/new/", {"name": "vww"})
    assert response.status_code == 400 and "exists" in response.content.decode()


def test_build_package_offers_only_fitting_profiles(client_for: Clients, fleet: Any) -> None:
    client = client_for("operator")
    page = html(client, f"/console/models/versions/{fleet.v1.pk}/")
    form = page[page.index('id="build-form"'):]
    assert 'value="stm32f746"' in form and 'value="esp32-s3"' not in form
    assert "arena_too_small" in page  # the refusal is explained
    response = client.post(f"/console/models/versions/{fleet.v1.pk}/packages/",
                           {"hardware_profile": "esp32-s3"})
    assert response.status_code == 400
    assert Package.objects.filter(model_version=fleet.v1).count() == 1


def test_rollouts_page_lists_packages(client_for: Clients, fleet: Any) -> None:
    page = html(client_for("viewer"), "/console/rollouts/")
    assert f'data-package="{fleet.pkg1.pk}"' in page and f'data-package="{fleet.pkg2.pk}"' in page
    assert "kws@1.1.0" in page


def telemetry_data(page: str) -> dict[str, Any]:
    raw = re.search(r'<script id="telemetry-data" type="application/json">(.*?)</script>',
                    page, re.DOTALL).group(1)
    return json.loads(raw)


def test_telemetry_page_embeds_series_labels_and_summary(client_for: Clients,
                                                        fleet: Any) -> None:
    page = html(client_for("viewer"), "/console/telemetry/")
    data = telemetry_data(page)
    assert sum(p["events"] for p in data["series"]) == fleet.events
    assert data["label_names"] == ["silence", "unknown", "yes", "no"]
    # The fleet has 3 hours of data: the opening range follows it (6 h in 5-minute buckets).
    assert data["bucket"] == 300 and data["live"] is True
    assert f'data-summary="events">{fleet.events:,}<' in page
    assert "/api/v1/telemetry/series/?" in page and "format=csv" in page


def test_telemetry_filters_and_compares_versions(client_for: Clients, fleet: Any) -> None:
    client = client_for("viewer")
    lab = telemetry_data(html(client, "/console/telemetry/?range=6h&group=lab"))
    field = telemetry_data(html(client, "/console/telemetry/?range=6h&group=field"))
    total = sum(p["events"] for p in lab["series"]) + sum(p["events"] for p in field["series"])
    assert total == fleet.events and lab["params"] == {"group": "lab"}
    page = html(client, f"/console/telemetry/?range=24h&a={fleet.v1.pk}&b={fleet.v2.pk}")
    compare = telemetry_data(page)["compare"]
    assert compare["a"]["devices"] == 2 and compare["b"]["devices"] == 2
    assert compare["delta"]["mean_score"] < 0  # the seeded 1.1.0 is less confident
    assert 'id="comparison"' in page and "Population stability index" in page


def test_telemetry_custom_range_is_checked(client_for: Clients, fleet: Any) -> None:
    client = client_for("viewer")
    response = client.get("/console/telemetry/?range=custom&since=2026-01-02T00:00"
                          "&until=2026-01-01T00:00")
    assert response.status_code == 400 and "start must be before the end" in (
        response.content.decode())
    page = html(client, "/console/telemetry/?range=custom&since=2020-01-01T00:00"
                        "&until=2020-01-01T06:00")
    data = telemetry_data(page)
    assert data["series"] == [] and data["live"] is False and data["bucket"] == 300


def test_audit_log_filters(client_for: Clients, fleet: Any) -> None:
    operator = client_for("operator")
    operator.post("/console/devices/dev-a2/revoke/")
    viewer = client_for("viewer")
    page = html(viewer, "/console/audit/?action=device.")
    assert "<code>device.revoke</code>" in page
    assert "<code>enrollment_token.create</code>" not in page
    page = html(viewer, "/console/audit/?object_type=devices.enrollmenttoken")
    assert "<code>enrollment_token.create</code>" in page
    assert "<code>device.revoke</code>" not in page
    actor = AuditLog.objects.get(action="device.revoke").actor_label
    page = html(viewer, f"/console/audit/?actor_label={actor}")
    assert "<code>device.revoke</code>" in page and "system" not in page.split("<tbody>")[1]
