"""Fixtures shared by the whole suite, named after what they make."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.accounts.actions import do_create_user
from fleet.accounts.roles import Role
from fleet.devices.actions import do_create_enrollment_token
from fleet.devices.models import DeviceGroup, HardwareProfile

# Integration fixtures (real Mosquitto) live in a plugin so every test folder can use them.
pytest_plugins = ["testkit.broker", "testkit.worker"]


@pytest.fixture
def user_factory(db: Any) -> Callable[[Role], Any]:
    """Make users holding one role each."""
    counter = iter(range(10_000))

    def make(role: Role) -> Any:
        return do_create_user(f"{role.label}{next(counter)}", "correct-horse-battery", role,
                              actor=None)

    return make


@pytest.fixture
def api_client_for(user_factory: Callable[[Role], Any]) -> Callable[[str], APIClient]:
    """Return an API client logged in with a token as the named role ('anonymous': none)."""

    def make(role_name: str) -> APIClient:
        client = APIClient()
        if role_name != "anonymous":
            role = {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "admin": Role.ADMIN}[role_name]
            client.force_authenticate(user_factory(role))
        return client

    return make


@pytest.fixture
def admin_client(api_client_for: Callable[[str], APIClient]) -> APIClient:
    return api_client_for("admin")


@pytest.fixture
def operator_client(api_client_for: Callable[[str], APIClient]) -> APIClient:
    return api_client_for("operator")


@pytest.fixture
def hardware_profile(db: Any) -> HardwareProfile:
    """A stock profile (loaded by migration; re-made after a transactional test's flush)."""
    from fleet.devices.stock_profiles import STOCK_PROFILES

    for spec in STOCK_PROFILES:
        HardwareProfile.objects.get_or_create(name=spec["name"], defaults=spec)
    return HardwareProfile.objects.get(name="stm32f746")


@pytest.fixture
def device_group(db: Any) -> DeviceGroup:
    return DeviceGroup.objects.create(name="lab")


@pytest.fixture
def enrollment_token_factory(db: Any) -> Callable[..., str]:
    """Create claim tokens; return the plain token."""

    def make(**kwargs: Any) -> str:
        kwargs.setdefault("expires_at", timezone.now() + timedelta(days=1))
        _, plain = do_create_enrollment_token(actor=None, **kwargs)
        return plain

    return make


def make_public_key_pem() -> str:
    """Return a fresh Ed25519 public key in PEM, as a device would generate."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture
def device_public_key_pem() -> str:
    return make_public_key_pem()


CAPABILITIES = {
    "firmware_version": "1.4.0",
    "tflm_version": "2026.10",
    "ops": ["CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE"],
    "arena_bytes": 65536,
    "slot_bytes": 262144,
    "pointer_bits": 32,
}


@pytest.fixture
def enroll_body(enrollment_token_factory: Callable[..., str], device_public_key_pem: str,
                hardware_profile: HardwareProfile) -> dict[str, Any]:
    """A valid enrollment request body."""
    return {
        "token": enrollment_token_factory(),
        "public_key": device_public_key_pem,
        "hardware": hardware_profile.name,
        "capabilities": dict(CAPABILITIES),
    }


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Start every test with empty throttle counters."""
    from django.core.cache import cache

    cache.clear()
