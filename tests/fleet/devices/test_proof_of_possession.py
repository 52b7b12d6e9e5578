"""Nobody enrolls as a device without its private key: every takeover path, refused.

Each test stands for an attack that worked before enrollment asked for proof of possession:
re-enrolling a known public key with any token, replaying a device's signed request, and
claiming serial numbers with a batch token before their devices do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from rest_framework.test import APIClient

from fleet.audit.models import AuditLog
from fleet.devices.models import Device, UsedNonce
from fleet.devices.proof import issue_nonce
from tests.conftest import make_public_key_pem, post_enroll, signed

pytestmark = pytest.mark.django_db
URL = "/api/v1/enroll/"


def enrollments() -> int:
    return AuditLog.objects.filter(action__in=["device.enroll", "device.re_enroll"]).count()


def test_public_key_alone_cannot_re_enroll_a_device(
    enroll_body: dict[str, Any], enrollment_token_factory: Callable[..., str],
) -> None:
    """The takeover: a device's public key (not a secret) and any active token, or its own
    used-up one, got a fresh credential for that device. Signed by another key: refused."""
    assert post_enroll({**enroll_body, "uid": "victim"}).status_code == 201
    before = enrollments()
    attacker = ed25519.Ed25519PrivateKey.generate()
    for token in (enroll_body["token"], enrollment_token_factory()):  # its own, used up; fresh
        response = post_enroll({**enroll_body, "uid": "victim", "token": token}, key=attacker)
        assert (response.status_code, response.json()["reason"]) == (403, "proof_invalid")
        assert "credential" not in response.content.decode()
    assert enrollments() == before


def test_the_key_holder_still_re_enrolls(enroll_body: dict[str, Any]) -> None:
    """The real device, which lost its answer, enrolls again with its own signature: 200."""
    assert post_enroll({**enroll_body, "uid": "dev-1"}).status_code == 201
    again = post_enroll({**enroll_body, "uid": "dev-1"})
    assert (again.status_code, again.json()["device_id"], again.json()["created"]) == (
        200, "dev-1", False)


def test_a_signed_request_cannot_be_replayed(enroll_body: dict[str, Any]) -> None:
    """Captured on the wire and sent again, a signed enrollment is refused: its nonce is spent."""
    client = APIClient()
    body = signed({**enroll_body, "uid": "dev-1"}, client)
    assert client.post(URL, body, format="json").status_code == 201
    before = enrollments()
    replay = client.post(URL, body, format="json")
    assert (replay.status_code, replay.json()["reason"]) == (403, "proof_replayed")
    assert enrollments() == before


def test_a_refused_request_does_not_spend_its_nonce(enroll_body: dict[str, Any]) -> None:
    """A refusal after the proof checked (here: unknown profile) writes nothing, nonce included."""
    client = APIClient()
    body = signed({**enroll_body, "hardware": "no-such-board"}, client)
    assert client.post(URL, body, format="json").json()["reason"] == "unknown_hardware"
    assert not UsedNonce.objects.exists()


@pytest.mark.parametrize("change", [
    {"uid": "someone-else"}, {"hardware": "esp32-s3"}, {"token": "fet_other"},
    {"capabilities": {"firmware_version": "9", "ops": ["CONV_2D"], "arena_bytes": 1,
                      "slot_bytes": 1, "tflm_version": "x", "pointer_bits": 32}},
], ids=["uid", "hardware", "token", "capabilities"])
def test_every_signed_field_is_bound(enroll_body: dict[str, Any], change: dict[str, Any]) -> None:
    """Changing any field after the device signed breaks the signature."""
    client = APIClient()
    body = signed({**enroll_body, "uid": "dev-1"}, client)
    response = client.post(URL, {**body, **change}, format="json")
    assert (response.status_code, response.json()["reason"]) == (403, "proof_invalid")
    assert not Device.objects.exists()


@pytest.mark.parametrize("nonce,reason", [
    (lambda: issue_nonce(time.time() - 3600), "proof_expired"),
    (lambda: bytes(40), "proof_invalid"),  # not issued by this server
    (lambda: issue_nonce()[:-1] + b"\0", "proof_invalid"),  # a forged MAC
], ids=["expired", "made-up", "forged-mac"])
def test_only_fresh_nonces_of_this_server(enroll_body: dict[str, Any], nonce: Callable[[], bytes],
                                          reason: str) -> None:
    """The nonce must be this server's and recent, so signatures cannot be made in advance."""
    from device_sdk.protocol.enrollment import enrollment_message
    from tests.conftest import private_key_of

    value = nonce()
    message = enrollment_message(nonce=value, token=enroll_body["token"], uid="",
                                 hardware=enroll_body["hardware"],
                                 capabilities=enroll_body["capabilities"])
    signature = private_key_of(enroll_body["public_key"]).sign(message)
    response = APIClient().post(URL, {**enroll_body, "nonce": value.hex(),
                                      "signature": signature.hex()}, format="json")
    assert (response.status_code, response.json()["reason"]) == (403, reason)


def test_unsigned_requests_are_incomplete(enroll_body: dict[str, Any]) -> None:
    """No nonce and signature: 400 naming both fields, nothing written."""
    response = APIClient().post(URL, enroll_body, format="json")
    assert response.status_code == 400
    assert {"nonce", "signature"} <= set(response.json()["fields"])
    assert not Device.objects.exists()


def test_the_challenge_writes_nothing() -> None:
    """Anonymous callers may ask for nonces as often as the throttle allows: no rows."""
    for _ in range(5):
        assert len(bytes.fromhex(APIClient().post(URL + "challenge/").json()["nonce"])) == 40
    assert not UsedNonce.objects.exists()


# -- claim tokens bound to identities --------------------------------------------------------

def body_for(token: str, hardware: str, uid: str | None = None) -> dict[str, Any]:
    from tests.conftest import CAPABILITIES

    body = {"token": token, "public_key": make_public_key_pem(), "hardware": hardware,
            "capabilities": dict(CAPABILITIES)}
    return {**body, "uid": uid} if uid else body


def test_a_batch_token_cannot_squat_serial_numbers(
    enrollment_token_factory: Callable[..., str], hardware_profile: Any,
) -> None:
    """The squat: whoever held a multi-use token enrolled future serial numbers first. A batch
    token without a pattern or list enrolls key-derived uids only."""
    token = enrollment_token_factory(max_uses=50, uid_pattern="")
    squat = post_enroll(body_for(token, hardware_profile.name, "SN-000777"))
    assert (squat.status_code, squat.json()["reason"]) == (403, "uid_not_allowed")
    derived = post_enroll(body_for(token, hardware_profile.name))
    assert derived.status_code == 201 and derived.json()["device_id"].startswith("dev-")


def test_a_factory_token_bound_to_a_pattern_refuses_other_uids(
    enrollment_token_factory: Callable[..., str], hardware_profile: Any,
) -> None:
    """A factory line's token names its serial format; anything else is refused."""
    token = enrollment_token_factory(max_uses=1000, uid_pattern=r"SN-[0-9]{6}")
    assert post_enroll(body_for(token, hardware_profile.name, "SN-000123")).status_code == 201
    for uid in ("SN-12", "sn-000124", "SN-000124-x", "other"):
        refused = post_enroll(body_for(token, hardware_profile.name, uid))
        assert (refused.status_code, refused.json()["reason"]) == (403, "uid_not_allowed"), uid


def test_an_allow_list_token(enrollment_token_factory: Callable[..., str],
                             hardware_profile: Any) -> None:
    token = enrollment_token_factory(max_uses=10, allowed_uids=["cam-1", "cam-2"])
    assert post_enroll(body_for(token, hardware_profile.name, "cam-2")).status_code == 201
    assert post_enroll(body_for(token, hardware_profile.name, "cam-3")).status_code == 403


def test_taken_and_not_allowed_uids_read_the_same(
    enrollment_token_factory: Callable[..., str], hardware_profile: Any,
) -> None:
    """A refusal does not reveal whether a uid exists: taken and not admitted look alike."""
    token = enrollment_token_factory(max_uses=10, allowed_uids=["cam-1", "cam-2"])
    assert post_enroll(body_for(token, hardware_profile.name, "cam-1")).status_code == 201
    taken = post_enroll(body_for(token, hardware_profile.name, "cam-1"))
    not_allowed = post_enroll(body_for(token, hardware_profile.name, "cam-9"))
    assert (taken.status_code, taken.json()) == (not_allowed.status_code, not_allowed.json())


def test_tokens_state_their_binding_in_the_api(operator_client: APIClient) -> None:
    """An operator creates a factory token with a pattern; a bad pattern is a 400."""
    ok = operator_client.post("/api/v1/enrollment-tokens/",
                              {"max_uses": 100, "uid_pattern": "SN-[0-9]+"}, format="json")
    assert ok.status_code == 201 and ok.json()["uid_pattern"] == "SN-[0-9]+"
    bad = operator_client.post("/api/v1/enrollment-tokens/",
                               {"max_uses": 100, "uid_pattern": "SN-[0-9"}, format="json")
    assert bad.status_code == 400 and "uid_pattern" in bad.json()["fields"]
