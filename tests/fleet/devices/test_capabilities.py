"""A device whose reported ops, arena or slot contradict its profile is flagged: at enrollment,
in status, on the console's device page. Before, the server stored the capabilities unread."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from device_sdk.protocol.status import LinkState, Status, parse_capabilities
from fleet.audit.models import AuditLog
from fleet.devices.models import Device, HardwareProfile
from fleet.devices.presence import apply_status
from tests.conftest import CAPABILITIES, post_enroll

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def fitting(profile: HardwareProfile) -> dict[str, Any]:
    """Capabilities that match ``profile`` exactly."""
    return {**CAPABILITIES, "ops": list(profile.supported_ops),
            "arena_bytes": profile.arena_ram_bytes, "slot_bytes": profile.model_slot_bytes}


def codes(device: Device) -> set[str]:
    device.refresh_from_db()
    return {i["code"] for i in device.capability_issues}


def test_enrollment_flags_a_device_short_of_its_profile(
    enroll_body: dict[str, Any], hardware_profile: HardwareProfile, admin_client: APIClient,
) -> None:
    short = {**fitting(hardware_profile), "arena_bytes": 65536, "slot_bytes": 262144,
             "ops": [o for o in hardware_profile.supported_ops if o != "SOFTMAX"]}
    response = post_enroll({**enroll_body, "capabilities": short})
    assert response.status_code == 201  # flagged, not refused: the device exists and reports
    device = Device.objects.get()
    assert codes(device) == {"ops_missing", "arena_smaller", "slot_smaller"}
    messages = " ".join(i["message"] for i in device.capability_issues)
    assert "SOFTMAX" in messages and "arena 65536 bytes, stm32f746 promises 245760" in messages
    shown = admin_client.get(f"/api/v1/devices/{device.uid}/").json()
    assert {i["code"] for i in shown["capability_issues"]} == codes(device)


def test_a_fitting_device_is_not_flagged(
    enroll_body: dict[str, Any], hardware_profile: HardwareProfile,
) -> None:
    assert post_enroll({**enroll_body, "capabilities": fitting(hardware_profile)}
                       ).status_code == 201
    assert codes(Device.objects.get()) == set()


def test_status_capabilities_raise_and_clear_the_flag_with_an_audit(
    enroll_body: dict[str, Any], hardware_profile: HardwareProfile,
) -> None:
    post_enroll({**enroll_body, "capabilities": fitting(hardware_profile)})
    device = Device.objects.get()
    smaller = parse_capabilities({**fitting(hardware_profile), "arena_bytes": 1024})
    apply_status(device.pk, Status(LinkState.ONLINE, model=0, slot=0, uptime_s=1, free_ram=1,
                                   seq=0, capabilities=smaller), T0)
    assert codes(device) == {"arena_smaller"}
    assert AuditLog.objects.filter(action="device.capability_issues").count() == 1
    apply_status(device.pk, Status(LinkState.ONLINE, model=0, slot=0, uptime_s=2, free_ram=1,
                                   seq=0, capabilities=None), T0)  # unchanged: still flagged
    assert codes(device) == {"arena_smaller"}
    fixed = parse_capabilities(fitting(hardware_profile))
    apply_status(device.pk, Status(LinkState.ONLINE, model=0, slot=0, uptime_s=3, free_ram=1,
                                   seq=0, capabilities=fixed), T0)
    assert codes(device) == set()
    assert AuditLog.objects.filter(action="device.capability_issues").count() == 2


def test_the_console_device_page_shows_the_contradiction(
    enroll_body: dict[str, Any], hardware_profile: HardwareProfile, client: Client,
    user_factory: Any,
) -> None:
    from fleet.core.roles import Role

    post_enroll({**enroll_body, "capabilities": {**fitting(hardware_profile),
                                                 "slot_bytes": 4096}})
    client.force_login(user_factory(Role.VIEWER))
    page = client.get(f"/console/devices/{Device.objects.get().uid}/").content.decode()
    assert 'id="capability-issues"' in page and 'data-issue="slot_smaller"' in page
    assert "model slot 4096 bytes, stm32f746 promises 393216" in page


def test_the_devices_api_filters_flagged_devices(
    enroll_body: dict[str, Any], hardware_profile: HardwareProfile, admin_client: APIClient,
    enrollment_token_factory: Any,
) -> None:
    from tests.conftest import make_public_key_pem

    post_enroll({**enroll_body, "capabilities": fitting(hardware_profile), "uid": "dev-fit"})
    post_enroll({**enroll_body, "token": enrollment_token_factory(),
                 "public_key": make_public_key_pem(), "uid": "dev-short",
                 "capabilities": {**fitting(hardware_profile), "arena_bytes": 1024}})
    flagged = admin_client.get("/api/v1/devices/?capability_issues=true").json()["results"]
    clean = admin_client.get("/api/v1/devices/?capability_issues=false").json()["results"]
    assert [d["uid"] for d in flagged] == ["dev-short"]
    assert [d["uid"] for d in clean] == ["dev-fit"]
