"""POST /api/v1/enroll/: every refusal has an exact status and reason and writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from fleet.audit.models import AuditLog
from fleet.devices.models import Device, EnrollmentToken
from tests.conftest import make_public_key_pem, post_enroll, register_key

pytestmark = pytest.mark.django_db
URL = "/api/v1/enroll/"


def enroll(body: dict[str, Any], client: APIClient | None = None) -> Any:
    return post_enroll(body, client)


def counts() -> tuple[int, int, list[int]]:
    """Rows that a refused enrollment must not change."""
    return (
        Device.objects.count(),
        AuditLog.objects.filter(action__startswith="device.").count(),
        list(EnrollmentToken.objects.order_by("id").values_list("uses", flat=True)),
    )


def test_valid_token_enrolls_device_and_returns_credential(enroll_body: dict[str, Any]) -> None:
    """A valid request creates the device, consumes one use and returns id and MQTT creds."""
    response = enroll({**enroll_body, "uid": "sensor-001"})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["device_id"] == "sensor-001"
    assert body["created"] is True
    assert body["mqtt"]["username"] == "sensor-001"
    assert len(body["mqtt"]["credential"]) >= 24
    assert body["mqtt"]["url"].startswith("mqtt")
    assert isinstance(body["signing_keys"], list)
    device = Device.objects.get(uid="sensor-001")
    assert device.hardware_profile.name == "stm32f746"
    assert device.firmware_version == "1.4.0"
    assert device.capabilities["ops"] == ["CONV_2D", "FULLY_CONNECTED", "RESHAPE", "SOFTMAX"]
    assert device.key_algorithm == "ed25519"
    assert EnrollmentToken.objects.get().uses == 1
    assert AuditLog.objects.filter(action="device.enroll", object_id=str(device.pk)).exists()


def test_uid_defaults_to_key_fingerprint(enroll_body: dict[str, Any]) -> None:
    response = enroll(enroll_body)
    assert response.status_code == 201
    device = Device.objects.get()
    assert response.json()["device_id"] == device.uid == "dev-" + device.public_key_fingerprint[:16]


def test_token_group_is_applied(enrollment_token_factory: Callable[..., str], device_group: Any,
                                enroll_body: dict[str, Any]) -> None:
    body = {**enroll_body, "token": enrollment_token_factory(group=device_group)}
    assert enroll(body).status_code == 201
    assert Device.objects.get().group == device_group


def test_p256_key_is_accepted(enroll_body: dict[str, Any]) -> None:
    pem = register_key(ec.generate_private_key(ec.SECP256R1()))
    assert enroll({**enroll_body, "public_key": pem}).status_code == 201
    assert Device.objects.get().key_algorithm == "p256"


def test_reuse_past_max_uses_is_refused(enrollment_token_factory: Callable[..., str],
                                        enroll_body: dict[str, Any]) -> None:
    token = enrollment_token_factory(max_uses=2)
    for _ in range(2):
        assert enroll({**enroll_body, "token": token, "public_key": make_public_key_pem()}).status_code == 201
    before = counts()
    response = enroll({**enroll_body, "token": token, "public_key": make_public_key_pem()})
    assert response.status_code == 403
    assert response.json()["reason"] == "token_used_up"
    assert counts() == before


def test_expired_token_is_refused(enroll_body: dict[str, Any]) -> None:
    EnrollmentToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    before = counts()
    response = enroll(enroll_body)
    assert (response.status_code, response.json()["reason"]) == (403, "token_expired")
    assert counts() == before


def test_revoked_token_is_refused(enroll_body: dict[str, Any], operator_client: APIClient) -> None:
    token = EnrollmentToken.objects.get()
    assert operator_client.post(f"/api/v1/enrollment-tokens/{token.pk}/revoke/").status_code == 200
    before = counts()
    response = enroll(enroll_body)
    assert (response.status_code, response.json()["reason"]) == (403, "token_revoked")
    assert counts() == before


def test_unknown_token_is_refused(enroll_body: dict[str, Any]) -> None:
    before = counts()
    response = enroll({**enroll_body, "token": "fet_not-a-real-token"})
    assert (response.status_code, response.json()["reason"]) == (403, "token_unknown")
    assert counts() == before


@pytest.mark.parametrize(
    "public_key",
    [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    ],
    ids=["garbage", "truncated-pem", "rsa"],
)
def test_malformed_or_unsupported_key_is_refused(enroll_body: dict[str, Any], public_key: str) -> None:
    before = counts()
    response = enroll({**enroll_body, "public_key": public_key})
    assert (response.status_code, response.json()["reason"]) == (400, "invalid_public_key")
    assert counts() == before


def test_unknown_hardware_profile_is_refused(enroll_body: dict[str, Any]) -> None:
    before = counts()
    response = enroll({**enroll_body, "hardware": "pdp-11"})
    assert (response.status_code, response.json()["reason"]) == (400, "unknown_hardware")
    assert counts() == before


def test_token_bound_to_other_hardware_is_refused(
    enrollment_token_factory: Callable[..., str], enroll_body: dict[str, Any]
) -> None:
    from fleet.devices.models import HardwareProfile

    token = enrollment_token_factory(hardware_profile=HardwareProfile.objects.get(name="esp32-s3"))
    before = counts()
    response = enroll({**enroll_body, "token": token})
    assert (response.status_code, response.json()["reason"]) == (403, "token_hardware_mismatch")
    assert counts() == before


@pytest.mark.parametrize(
    "change",
    [
        {"capabilities": {"firmware_version": "1"}},  # ops and arena missing
        {"capabilities": {**{"firmware_version": "1", "ops": ["conv2d"], "arena_bytes": 1}}},
        {"capabilities": {"firmware_version": "1", "ops": [], "arena_bytes": -5}},
        {"hardware": "not a slug!"},
        {"token": None},
    ],
    ids=["missing-fields", "lowercase-op", "negative-arena", "bad-hardware", "null-token"],
)
def test_schema_errors_are_400_with_fields(enroll_body: dict[str, Any], change: dict[str, Any]) -> None:
    before = counts()
    response = enroll({**enroll_body, **change})
    assert response.status_code == 400
    assert response.json()["reason"] == "invalid"
    assert response.json()["fields"]
    assert counts() == before


def test_oversized_body_is_refused(enroll_body: dict[str, Any]) -> None:
    before = counts()
    response = enroll({**enroll_body, "name": "x" * 20_000})
    assert (response.status_code, response.json()["reason"]) == (413, "payload_too_large")
    assert counts() == before


def test_non_json_body_is_a_clean_error() -> None:
    response = APIClient().post(URL, b"\x00\xff garbage", content_type="application/json")
    assert response.status_code == 400


def test_re_enroll_with_same_key_is_idempotent(enroll_body: dict[str, Any]) -> None:
    """Same key, same token (even used up): same device, no extra use, fresh credential."""
    first = enroll({**enroll_body, "uid": "sensor-7"}).json()
    again = enroll({**enroll_body, "uid": "sensor-7"})
    assert again.status_code == 200
    assert again.json()["device_id"] == first["device_id"] == "sensor-7"
    assert again.json()["created"] is False
    assert again.json()["mqtt"]["credential"] != first["mqtt"]["credential"]
    assert Device.objects.count() == 1
    assert EnrollmentToken.objects.get().uses == 1


def test_conflicting_key_for_existing_uid_is_refused(enroll_body: dict[str, Any],
                                                     enrollment_token_factory: Callable[..., str]) -> None:
    assert enroll({**enroll_body, "uid": "sensor-9"}).status_code == 201
    original = Device.objects.get().public_key_fingerprint
    before = counts()
    other = {**enroll_body, "uid": "sensor-9", "token": enrollment_token_factory(),
             "public_key": make_public_key_pem()}
    response = enroll(other)
    assert (response.status_code, response.json()["reason"]) == (403, "uid_not_allowed")
    assert counts()[:2] == before[:2]
    assert Device.objects.get().public_key_fingerprint == original


def test_same_key_claiming_another_uid_is_refused(enroll_body: dict[str, Any]) -> None:
    assert enroll({**enroll_body, "uid": "a-1"}).status_code == 201
    response = enroll({**enroll_body, "uid": "b-2"})
    assert (response.status_code, response.json()["reason"]) == (409, "key_bound_to_other_device")
    assert list(Device.objects.values_list("uid", flat=True)) == ["a-1"]


def test_revoked_device_cannot_re_enroll(enroll_body: dict[str, Any], operator_client: APIClient) -> None:
    assert enroll({**enroll_body, "uid": "gone-1"}).status_code == 201
    assert operator_client.post("/api/v1/devices/gone-1/revoke/").status_code == 200
    response = enroll({**enroll_body, "uid": "gone-1"})
    assert (response.status_code, response.json()["reason"]) == (403, "device_revoked")


def test_enrollment_is_rate_limited_per_address(enroll_body: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES",
                        {"enroll": "3/min", "enroll_challenge": "100/min"})
    statuses = [enroll({**enroll_body, "token": "fet_wrong"}).status_code for _ in range(4)]
    assert statuses == [403, 403, 403, 429]
    assert enroll(enroll_body).json()["reason"] == "throttled"
    other = APIClient(REMOTE_ADDR="10.9.9.9")
    assert enroll(enroll_body, other).status_code == 201
