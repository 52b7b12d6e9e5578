"""Gateway API tokens: issued with the gateway, stored as a hash, good for one endpoint only.

A gateway relays its MCUs' signed enrollments with its own token (``Authorization: Gateway
<token>``), which makes them its children, so no operator credential sits on a field host; it
may re-attach only its own enrollees, each proving possession of its key. The
token opens ``POST /api/v1/gateways/{its uid}/children/`` and nothing else (the authorization
matrix runs it against every other route); re-provisioning replaces it and revoking the gateway
kills it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from fleet.core.roles import Role
from fleet.audit.models import AuditLog
from fleet.devices.models import Gateway
from tests.fleet.devices.conftest import attach_proof

pytestmark = pytest.mark.django_db


@pytest.fixture
def provision(operator_client: APIClient) -> Callable[..., dict[str, Any]]:
    """Provision (or re-provision) a gateway as an operator; return the one-time answer."""

    def make(uid: str, children: list[str] | None = None) -> dict[str, Any]:
        response = operator_client.post("/api/v1/gateways/",
                                        {"uid": uid, "children": children or []}, format="json")
        assert response.status_code in (200, 201), response.json()
        return response.json()

    return make


def as_gateway(token: str) -> APIClient:
    """Return an API client that authenticates with a gateway token."""
    return APIClient(HTTP_AUTHORIZATION=f"Gateway {token}")


def children_of(uid: str) -> list[str]:
    return sorted(Gateway.objects.get(uid=uid).children.values_list("uid", flat=True))


def test_provisioning_issues_a_token_shown_once_and_stores_only_its_hash(
    provision: Callable[..., dict[str, Any]], operator_client: APIClient,
) -> None:
    """The answer carries the plain token; the row keeps its SHA-256 and a short prefix; the
    list, the detail and the audit entry never carry the secret."""
    answer = provision("gw-1")
    token = answer["gateway_token"]
    assert token.startswith("fgt_") and len(token) >= 40
    gateway = Gateway.objects.get(uid="gw-1")
    assert gateway.api_token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert gateway.api_token_prefix == token[:8] == answer["api_token_prefix"]

    detail = operator_client.get("/api/v1/gateways/gw-1/").json()
    listed = json.dumps(operator_client.get("/api/v1/gateways/").json())
    assert "gateway_token" not in detail and token not in json.dumps(detail) + listed
    assert detail["api_token_prefix"] == token[:8]

    issued = AuditLog.objects.get(action="gateway.issue_token", object_repr="gw-1")
    assert issued.after == {"api_token_prefix": token[:8]} and issued.before is None
    assert issued.actor is not None  # the operator who provisioned it
    everything = json.dumps(list(AuditLog.objects.values("before", "after")))
    assert token not in everything and token[8:] not in everything


def test_gateway_relayed_enrollment_makes_the_child(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[..., str],
) -> None:
    """An MCU's signed enrollment relayed with the gateway's token makes it that gateway's
    child at once, and records which gateway it came through."""
    from fleet.devices.models import Device

    token = provision("gw-1")["gateway_token"]
    child = enrolled("dev-1", via="gw-1", gateway_token=token)
    assert children_of("gw-1") == [child]
    assert Device.objects.get(uid=child).enrolled_via.uid == "gw-1"


def test_a_relayed_signature_is_bound_to_its_gateway(
    provision: Callable[..., dict[str, Any]], enrollment_token_factory: Callable[..., str],
    hardware_profile: Any,
) -> None:
    """A signature the device made for one gateway's relay does not verify through another."""
    from tests.conftest import CAPABILITIES, make_public_key_pem, post_enroll

    provision("gw-1")
    other = provision("gw-2")["gateway_token"]
    body = {"token": enrollment_token_factory(), "public_key": make_public_key_pem(),
            "hardware": hardware_profile.name, "capabilities": dict(CAPABILITIES),
            "uid": "dev-1"}
    response = post_enroll(body, as_gateway(other), via="gw-1")
    assert (response.status_code, response.json()["reason"]) == (403, "proof_invalid")
    assert children_of("gw-2") == []


def test_gateway_token_reattaches_its_own_enrollee_with_a_proof(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[..., str],
) -> None:
    """A child the gateway enrolled, detached by an operator, comes back when it proves its
    key through the gateway: 200, and the audit entry names the gateway as the actor."""
    token = provision("gw-1")["gateway_token"]
    child = enrolled("dev-1", via="gw-1", gateway_token=token)
    token = provision("gw-1", [])["gateway_token"]  # an operator detaches it (re-provision)
    response = as_gateway(token).post(
        "/api/v1/gateways/gw-1/children/",
        {"children": [child], "proofs": {child: attach_proof(child, "gw-1")}}, format="json")
    assert response.status_code == 200, response.json()
    assert children_of("gw-1") == [child]
    entry = AuditLog.objects.filter(action="gateway.add_children").latest("id")
    assert (entry.actor, entry.actor_label) == (None, "gateway:gw-1")


@pytest.mark.parametrize("case", ["not-its-enrollee", "no-proof", "forged-proof", "unknown"])
def test_gateway_token_cannot_adopt_what_it_did_not_enroll(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[..., str], case: str,
) -> None:
    """A gateway cannot take a device it did not enroll, even with that device's valid proof,
    nor its own enrollee without one; every refusal reads the same, so it tells nobody which
    uids exist."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    token = provision("gw-1")["gateway_token"]
    if case == "not-its-enrollee":
        child = enrolled("dev-1")  # enrolled directly, by its owner
        proofs = {child: attach_proof(child, "gw-1")}
    elif case == "unknown":
        child, proofs = "dev-nobody", {}
    else:
        child = enrolled("dev-1", via="gw-1", gateway_token=token)
        token = provision("gw-1", [])["gateway_token"]  # detached by an operator
        proofs = {} if case == "no-proof" else {
            child: attach_proof(child, "gw-1", key=ed25519.Ed25519PrivateKey.generate())}
    before = AuditLog.objects.filter(action="gateway.add_children").count()
    response = as_gateway(token).post("/api/v1/gateways/gw-1/children/",
                                      {"children": [child], "proofs": proofs}, format="json")
    assert (response.status_code, response.json()["reason"]) == (403, "children_refused")
    assert response.json()["detail"].startswith("A gateway may attach only devices")
    assert children_of("gw-1") == []
    assert AuditLog.objects.filter(action="gateway.add_children").count() == before


@pytest.mark.parametrize("other", ["gw-2", "gw-missing"])
def test_gateway_token_cannot_add_children_to_another_gateway(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[[str], str], other: str,
) -> None:
    """Another gateway's endpoint (existing or not): 403 with a reason naming the mismatch."""
    token = provision("gw-1")["gateway_token"]
    provision("gw-2")
    child = enrolled("dev-1")
    response = as_gateway(token).post(f"/api/v1/gateways/{other}/children/",
                                      {"children": [child]}, format="json")
    assert response.status_code == 403
    assert response.json()["reason"] == "gateway_token_not_this_gateway"
    assert "gw-1" in response.json()["detail"]
    assert children_of("gw-2") == [] and children_of("gw-1") == []
    assert not AuditLog.objects.filter(action="gateway.add_children").exists()


@pytest.mark.parametrize(("method", "path", "body"), [
    ("get", "/api/v1/gateways/", None),
    ("get", "/api/v1/gateways/gw-1/", None),
    ("post", "/api/v1/gateways/", {"uid": "gw-1"}),  # would re-provision: rotate its own token
    ("post", "/api/v1/gateways/gw-1/revoke/", None),
    ("get", "/api/v1/devices/", None),
    ("post", "/api/v1/devices/dev-1/revoke/", None),
    ("post", "/api/v1/enrollment-tokens/", {"max_uses": 5}),
])
def test_gateway_token_opens_nothing_else(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[[str], str],
    method: str, path: str, body: dict[str, Any] | None,
) -> None:
    """Even its own gateway's other endpoints refuse it: 403 gateway_token_scope, no change.
    (The authorization matrix runs the token against every route.)"""
    token = provision("gw-1")["gateway_token"]
    enrolled("dev-1")
    before = AuditLog.objects.count()
    response = getattr(as_gateway(token), method)(path, body, format="json")
    assert response.status_code == 403, response.content
    assert response.json()["reason"] == "gateway_token_scope"
    assert AuditLog.objects.count() == before
    assert Gateway.objects.get(uid="gw-1").api_token_hash == hashlib.sha256(
        token.encode()).hexdigest()


def test_a_revoked_gateways_token_is_refused(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[[str], str],
    operator_client: APIClient,
) -> None:
    """Revoking the gateway kills its token: 401 gateway_revoked, no child added."""
    token = provision("gw-1")["gateway_token"]
    child = enrolled("dev-1")
    assert operator_client.post("/api/v1/gateways/gw-1/revoke/").status_code == 200
    response = as_gateway(token).post("/api/v1/gateways/gw-1/children/",
                                      {"children": [child]}, format="json")
    assert (response.status_code, response.json()["reason"]) == (401, "gateway_revoked")
    assert children_of("gw-1") == []


def test_reprovisioning_rotates_the_token(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[..., str],
    operator_client: APIClient,
) -> None:
    """Re-provisioning answers a new token; the old one is refused at once (401) and the
    rotation is audited by prefix only. A revoked gateway brought back gets a working one."""
    old = provision("gw-1")["gateway_token"]
    first = enrolled("dev-1", via="gw-1", gateway_token=old)
    new = provision("gw-1")["gateway_token"]  # re-provisioned: exactly no children
    assert new != old
    body = {"children": [first], "proofs": {first: attach_proof(first, "gw-1")}}
    refused = as_gateway(old).post("/api/v1/gateways/gw-1/children/", body, format="json")
    assert (refused.status_code, refused.json()["reason"]) == (401, "not_authenticated")
    assert as_gateway(new).post("/api/v1/gateways/gw-1/children/", body,
                                format="json").status_code == 200
    rotated = AuditLog.objects.filter(action="gateway.rotate_token").latest("id")
    assert rotated.before == {"api_token_prefix": old[:8]}
    assert rotated.after == {"api_token_prefix": new[:8]}
    assert old not in json.dumps([rotated.before, rotated.after])

    assert operator_client.post("/api/v1/gateways/gw-1/revoke/").status_code == 200
    again = provision("gw-1", [])["gateway_token"]
    second = enrolled("dev-2", via="gw-1", gateway_token=again)
    assert children_of("gw-1") == [second]


@pytest.mark.parametrize("header", [
    "Gateway fgt_not-a-real-token",
    "Gateway",
    "Gateway two parts",
    "Gateway " + "x" * 200,
])
def test_unknown_or_malformed_gateway_tokens_are_401(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[[str], str], header: str,
) -> None:
    """Anything but an issued token is not authenticated."""
    provision("gw-1")
    child = enrolled("dev-1")
    response = APIClient(HTTP_AUTHORIZATION=header).post(
        "/api/v1/gateways/gw-1/children/", {"children": [child]}, format="json")
    assert (response.status_code, response.json()["reason"]) == (401, "not_authenticated")
    assert children_of("gw-1") == []


def test_a_gateway_token_is_not_a_user_token(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[[str], str],
) -> None:
    """Sent as a user token (``Token ...``) it is just an unknown user token: 401."""
    token = provision("gw-1")["gateway_token"]
    response = APIClient(HTTP_AUTHORIZATION=f"Token {token}").post(
        "/api/v1/gateways/gw-1/children/", {"children": [enrolled("dev-1")]}, format="json")
    assert response.status_code == 401


def test_operators_still_add_children_with_their_own_credentials(
    provision: Callable[..., dict[str, Any]], enrolled: Callable[[str], str],
    user_factory: Any,
) -> None:
    """Operators (session or their API token) add children to any gateway as before; viewers
    cannot."""
    provision("gw-1")
    operator = Token.objects.create(user=user_factory(Role.OPERATOR)).key
    response = APIClient(HTTP_AUTHORIZATION=f"Token {operator}").post(
        "/api/v1/gateways/gw-1/children/", {"children": [enrolled("dev-1")]}, format="json")
    assert response.status_code == 200, response.json()
    assert children_of("gw-1") == ["dev-1"]
    entry = AuditLog.objects.get(action="gateway.add_children")
    assert entry.actor is not None and entry.actor_label == entry.actor.username
    viewer = Token.objects.create(user=user_factory(Role.VIEWER)).key
    refused = APIClient(HTTP_AUTHORIZATION=f"Token {viewer}").post(
        "/api/v1/gateways/gw-1/children/", {"children": [enrolled("dev-2")]}, format="json")
    assert (refused.status_code, refused.json()["reason"]) == (403, "permission_denied")
