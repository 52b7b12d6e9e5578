"""Django admin cannot bypass the actions: devices and claim tokens are read-only there, and
revoking goes through the revoke actions (audit entry, broker revoke)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from fleet.audit.models import AuditLog
from fleet.devices.models import Device, EnrollmentToken
from tests.conftest import post_enroll

pytestmark = pytest.mark.django_db


class RecordingBroker:
    """A broker-access backend that records what it was asked to do."""

    def __init__(self) -> None:
        self.revoked: list[str] = []

    def revoke_device(self, uid: str) -> None:
        self.revoked.append(uid)

    def provision_device(self, uid: str, password: str) -> None:
        pass


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> RecordingBroker:
    recording = RecordingBroker()
    monkeypatch.setattr("fleet.broker.configured.broker_access", lambda: recording)
    monkeypatch.setattr("fleet.devices.actions.broker_access", lambda: recording)
    return recording


@pytest.fixture
def superuser_client() -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def device(enroll_body: dict[str, Any]) -> Device:
    assert post_enroll(enroll_body).status_code == 201
    return Device.objects.get()


def test_a_device_cannot_be_edited_added_or_deleted_in_the_admin(
    superuser_client: Client, device: Device,
) -> None:
    change = f"/admin/devices/device/{device.pk}/change/"
    assert superuser_client.get(change).status_code == 200  # looking is fine
    edited = superuser_client.post(change, {
        "uid": device.uid, "name": "x", "state": "enrolled", "revoked_at": "",
        "public_key_pem": "forged", "hardware_profile": device.hardware_profile_id,
    })
    assert edited.status_code == 403
    deleted = superuser_client.post(f"/admin/devices/device/{device.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    assert superuser_client.get("/admin/devices/device/add/").status_code == 403
    fresh = Device.objects.get(pk=device.pk)
    assert (fresh.name, fresh.public_key_pem) == (device.name, device.public_key_pem)


def test_revoking_in_the_admin_goes_through_the_action(
    superuser_client: Client, device: Device, broker: RecordingBroker,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        answer = superuser_client.post("/admin/devices/device/", {
            "action": "revoke_devices", "_selected_action": [device.pk],
        })
    assert answer.status_code == 302
    device.refresh_from_db()
    assert device.revoked_at is not None and device.state == "revoked"
    entry = AuditLog.objects.get(action="device.revoke")
    assert entry.actor is not None and entry.actor.username == "root"
    assert broker.revoked == [device.uid]


def test_a_claim_token_is_revoked_only_through_the_action(
    superuser_client: Client, enrollment_token_factory: Any,
) -> None:
    enrollment_token_factory(max_uses=5)
    token = EnrollmentToken.objects.get()
    change = f"/admin/devices/enrollmenttoken/{token.pk}/change/"
    assert superuser_client.post(change, {"max_uses": 10_000}).status_code == 403
    answer = superuser_client.post("/admin/devices/enrollmenttoken/", {
        "action": "revoke_tokens", "_selected_action": [token.pk],
    })
    assert answer.status_code == 302
    token.refresh_from_db()
    assert token.max_uses == 5 and token.revoked_at is not None
    assert AuditLog.objects.filter(action="enrollment_token.revoke").count() == 1
