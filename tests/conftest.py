"""Fixtures shared by the whole suite, named after what they make."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from django.utils import timezone
from rest_framework.test import APIClient

from device_sdk.protocol.enrollment import enrollment_message
from fleet.accounts.actions import do_create_user
from fleet.core.roles import Role
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
        # Most tests enroll uids of their choosing; the uid-binding tests set their own rule.
        kwargs.setdefault("uid_pattern", ".*")
        _, plain = do_create_enrollment_token(actor=None, **kwargs)
        return plain

    return make


# Private keys of the public keys the tests made, so an enrollment body can be signed later.
_PRIVATE_KEYS: dict[str, Any] = {}


def register_key(private_key: Any) -> str:
    """Remember a device's private key; return its public key as enrollment PEM."""
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    _PRIVATE_KEYS[pem] = private_key
    return pem


def private_key_of(public_key_pem: str) -> Any:
    """Return the private key the tests made for ``public_key_pem``."""
    return _PRIVATE_KEYS[public_key_pem]


def make_public_key_pem() -> str:
    """Return a fresh Ed25519 public key in PEM, as a device would generate (its private half
    is kept for ``signed``)."""
    return register_key(ed25519.Ed25519PrivateKey.generate())


def signed(body: dict[str, Any], client: APIClient | None = None, *,
           via: str = "", key: Any = None) -> dict[str, Any]:
    """Return ``body`` with a fresh server nonce and the device's signature, as the SDK sends
    it (``key``: sign with another key than the body's own)."""
    answer = (client or APIClient()).post("/api/v1/enroll/challenge/")
    assert answer.status_code == 200, answer.content
    nonce = bytes.fromhex(answer.json()["nonce"])
    message = enrollment_message(nonce=nonce, token=str(body.get("token") or ""),
                                 uid=body.get("uid", ""),
                                 hardware=body["hardware"], capabilities=body["capabilities"],
                                 via=via)
    signer = key or _PRIVATE_KEYS.get(body.get("public_key"))
    if signer is None:  # a key the tests did not make (garbage, RSA): nobody can sign for it
        signature = bytes(64)
    elif isinstance(signer, ec.EllipticCurvePrivateKey):
        signature = signer.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        signature = signer.sign(message)
    return {**body, "nonce": nonce.hex(), "signature": signature.hex()}


def post_enroll(body: dict[str, Any], client: APIClient | None = None, **kwargs: Any) -> Any:
    """Sign ``body`` as its device would and POST it to /api/v1/enroll/."""
    client = client or APIClient()
    return client.post("/api/v1/enroll/", signed(body, client, **kwargs), format="json")


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
def _fresh_cache(request: pytest.FixtureRequest) -> Iterator[None]:
    """Start every test with empty throttle counters.

    They live in database tables (the API's rate buckets, the login throttle's cache; shared by
    every web process): a test in a transaction leaves nothing behind; one that commits
    (transactional_db, live_server) empties them before and after itself.
    """
    from django.conf import settings
    from django.core.cache import caches

    caches["default"].clear()
    marker = request.node.get_closest_marker("django_db")
    commits = bool({"transactional_db", "live_server"} & set(request.fixturenames)) or bool(
        marker and marker.kwargs.get("transaction"))
    if not commits:
        yield
        return
    request.getfixturevalue("transactional_db")
    from fleet.core.models import RateBucket

    caches[settings.THROTTLE_CACHE].clear()
    RateBucket.objects.all().delete()
    yield
    caches[settings.THROTTLE_CACHE].clear()
    RateBucket.objects.all().delete()
