"""Fixtures shared by the device and gateway tests."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from device_sdk.protocol.enrollment import attach_message
from fleet.devices.choices import DeviceState
from fleet.devices.models import Device, HardwareProfile
from tests.conftest import CAPABILITIES, make_public_key_pem, post_enroll, private_key_of


def make_device(profile: HardwareProfile, name: str = "dev", **fields: object) -> Device:
    """Create a device as enrollment leaves it (state ENROLLED, never seen, the test
    capabilities stored), uid ``<name>-<random>``; ``fields`` set or override model fields
    (``state``, ``last_seen``, ``revoked_at`` ...). For the presence tests, which write the
    database rows directly rather than enrolling over the API."""
    uid = f"{name}-{secrets.token_hex(3)}"
    return Device.objects.create(
        uid=uid, hardware_profile=profile, public_key_pem="-", public_key_fingerprint=uid,
        key_algorithm="ed25519", capabilities=dict(CAPABILITIES),
        firmware_version=CAPABILITIES["firmware_version"],
        tflm_version=CAPABILITIES["tflm_version"], **{"state": DeviceState.ENROLLED, **fields})


@pytest.fixture
def enrolled(enrollment_token_factory: Callable[..., str],
             hardware_profile: Any) -> Callable[..., str]:
    """Return a maker of enrolled devices (by uid); ``gateway_token`` (with ``via``, the
    gateway's uid) relays the signed enrollment through that gateway, as it does for its MCUs."""
    token = enrollment_token_factory(max_uses=20)

    def make(uid: str, *, via: str = "", gateway_token: str | None = None) -> str:
        body = {"token": token, "public_key": make_public_key_pem(),
                "hardware": hardware_profile.name, "capabilities": dict(CAPABILITIES), "uid": uid}
        client = APIClient(HTTP_AUTHORIZATION=f"Gateway {gateway_token}") if gateway_token \
            else APIClient()
        response = post_enroll(body, client, via=via)
        assert response.status_code == 201, response.json()
        return uid

    return make


def attach_proof(uid: str, gateway_uid: str, key: Any = None) -> dict[str, str]:
    """Return the proof a child gives (through its gateway) to be attached to ``gateway_uid``:
    a fresh nonce and its signature over the attach message (``key``: forge with another)."""
    from fleet.devices.models import Device

    nonce = bytes.fromhex(APIClient().post("/api/v1/enroll/challenge/").json()["nonce"])
    signer = key or private_key_of(Device.objects.get(uid=uid).public_key_pem)
    message = attach_message(nonce=nonce, gateway_uid=gateway_uid, uid=uid)
    return {"nonce": nonce.hex(), "signature": signer.sign(message).hex()}
