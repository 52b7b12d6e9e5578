"""Enrollment and revocation drive the real broker: the credential works, revocation kicks."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from fleet.broker.configured import reset_broker_access
from fleet.broker.mosquitto import MosquittoInstance
from tests.conftest import post_enroll

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def broker_settings(broker: MosquittoInstance) -> Iterator[None]:
    """Point the server at the session broker's dynamic security."""
    reset_broker_access()
    with override_settings(
        BROKER_ACCESS="dynsec",
        MQTT_URL=broker.url,
        MQTT_DEVICE_URL=broker.tls_url,
        MQTT_ADMIN_USERNAME=broker.admin_username,
        MQTT_ADMIN_PASSWORD=broker.admin_password,
        MQTT_CA_FILE=str(broker.ca_cert),
    ):
        yield
    reset_broker_access()


def test_enrolled_device_connects_and_revocation_disconnects_it(
    broker_settings: None, enroll_body: dict[str, Any], operator_client: APIClient,
    probe: Any, uid: Any,
) -> None:
    device_id = uid("enr")
    response = post_enroll({**enroll_body, "uid": device_id})
    assert response.status_code == 201, response.json()
    mqtt = response.json()["mqtt"]
    assert mqtt["url"].startswith("mqtts://")
    assert "BEGIN CERTIFICATE" in mqtt["ca_cert"]

    # The device verifies the broker with the CA it was handed, and logs in with its credential.
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as ca:
        ca.write(mqtt["ca_cert"])
    device = probe(mqtt["username"], mqtt["credential"], tls=True, ca_certs=ca.name)
    assert device.connect().value == 0
    assert device.publish(f"fleet/v1/{device_id}/events").value in (0, 16)
    assert device.publish("fleet/v1/someone-else/events").value == 135

    started = time.monotonic()
    assert operator_client.post(f"/api/v1/devices/{device_id}/revoke/").status_code == 200
    assert device.disconnected.wait(5), "revoked device still connected"
    assert time.monotonic() - started < 5

    again = probe(mqtt["username"], mqtt["credential"], tls=True, ca_certs=ca.name)
    with pytest.raises(AssertionError):
        assert again.connect().value == 0
    Path(ca.name).unlink()


def test_broker_down_refuses_enrollment_and_writes_nothing(
    enroll_body: dict[str, Any], unused_port: int
) -> None:
    from fleet.devices.models import Device, EnrollmentToken

    reset_broker_access()
    with override_settings(BROKER_ACCESS="dynsec", MQTT_URL=f"mqtt://127.0.0.1:{unused_port}",
                           MQTT_ADMIN_PASSWORD="x"):
        response = post_enroll(enroll_body)
    reset_broker_access()
    assert (response.status_code, response.json()["reason"]) == (503, "broker_unavailable")
    assert Device.objects.count() == 0
    assert EnrollmentToken.objects.get().uses == 0
