"""Every API endpoint x anonymous/viewer/operator/admin/gateway token: who may do what.

The matrix must name every route under /api/v1/; a new endpoint without a row fails
``test_matrix_covers_every_route``. The gateway column is a gateway's own API token
(``Authorization: Gateway ...``, for the seeded gateway): refused everywhere except the rows
marked ``gateway_token``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.urls import get_resolver
from rest_framework.test import APIClient

from fleet.devices.models import Device, EnrollmentToken

pytestmark = pytest.mark.django_db

RANK = {"anonymous": 0, "viewer": 1, "operator": 2, "admin": 3}


@dataclass(frozen=True)
class Row:
    method: str
    path: str  # {device} and {token} are filled from seeded rows
    minimum: str  # lowest role allowed; "anonymous" = public
    body: Callable[[], dict[str, Any]] | None = None
    ok: int = 200
    gateway_token: bool = False  # the seeded gateway's own token may call it too


def _profile_body() -> dict[str, Any]:
    return {"name": "test-board", "mcu": "M0+", "ram_bytes": 32768, "flash_bytes": 262144,
            "arena_ram_bytes": 16384, "model_slot_bytes": 65536, "kernel_set": "reference",
            "pointer_bits": 32, "supported_ops": ["FULLY_CONNECTED"]}


MATRIX = [
    Row("get", "/api/v1/hardware-profiles/", "viewer"),
    Row("get", "/api/v1/hardware-profiles/1/", "viewer"),
    Row("post", "/api/v1/hardware-profiles/", "admin", _profile_body, 201),
    Row("patch", "/api/v1/hardware-profiles/1/", "admin", lambda: {"description": "x"}),
    Row("delete", "/api/v1/hardware-profiles/{spare_profile}/", "admin", None, 204),
    Row("get", "/api/v1/groups/", "viewer"),
    Row("post", "/api/v1/groups/", "operator", lambda: {"name": "new-group"}, 201),
    Row("get", "/api/v1/groups/{group}/", "viewer"),
    Row("patch", "/api/v1/groups/{group}/", "operator", lambda: {"description": "x"}),
    Row("delete", "/api/v1/groups/{group}/", "operator", None, 204),
    Row("get", "/api/v1/devices/", "viewer"),
    Row("get", "/api/v1/devices/{device}/", "viewer"),
    Row("patch", "/api/v1/devices/{device}/", "operator", lambda: {"name": "renamed", "tags": ["a"]}),
    Row("post", "/api/v1/devices/{device}/revoke/", "operator"),
    Row("get", "/api/v1/enrollment-tokens/", "viewer"),
    Row("get", "/api/v1/enrollment-tokens/{token}/", "viewer"),
    Row("post", "/api/v1/enrollment-tokens/", "operator", lambda: {"max_uses": 5}, 201),
    Row("post", "/api/v1/enrollment-tokens/{token}/revoke/", "operator"),
    Row("get", "/api/v1/audit-log/", "viewer"),
    Row("get", "/api/v1/audit-log/{audit}/", "viewer"),
    Row("get", "/api/v1/users/", "admin"),
    Row("get", "/api/v1/users/{user}/", "admin"),
    Row("post", "/api/v1/users/", "admin",
        lambda: {"username": "newbie", "password": "long-enough-pw", "role": "viewer"}, 201),
    Row("get", "/api/v1/models/", "viewer"),
    Row("get", "/api/v1/models/{model}/", "viewer"),
    Row("post", "/api/v1/models/", "operator", lambda: {"name": "new-model"}, 201),
    Row("get", "/api/v1/model-versions/", "viewer"),
    Row("get", "/api/v1/model-versions/{model_version}/", "viewer"),
    # allowed roles get past the permission check to validation: 400 (no file given)
    Row("post", "/api/v1/model-versions/", "operator", lambda: {"version": "1.0.0"}, 400),
    Row("post", "/api/v1/model-versions/{model_version}/revalidate/", "operator", None, 202),
    # allowed roles reach the action: the seeded version has no admission result (409)
    Row("post", "/api/v1/model-versions/{model_version}/factory/", "operator",
        lambda: {"hardware_profile": "esp32-s3"}, 409),
    Row("get", "/api/v1/revalidation-jobs/", "viewer"),
    Row("get", "/api/v1/revalidation-jobs/{revalidation_job}/", "viewer"),
    Row("get", "/api/v1/packages/", "viewer"),
    Row("get", "/api/v1/packages/{package}/", "viewer"),
    Row("get", "/api/v1/packages/{package}/manifest/", "viewer"),
    Row("post", "/api/v1/packages/", "operator", lambda: {}, 400),
    Row("get", "/api/v1/signing-keys/", "viewer"),
    Row("get", "/api/v1/signing-keys/{kid}/", "viewer"),
    Row("post", "/api/v1/signing-keys/rotate/", "admin", None, 201),
    Row("post", "/api/v1/signing-keys/{kid}/activate/", "admin", None, 409),  # not pending
    Row("post", "/api/v1/signing-keys/{kid}/retire/", "admin", None, 409),  # the only key
    Row("get", "/api/v1/telemetry/series/", "viewer"),
    Row("get", "/api/v1/telemetry/labels/", "viewer"),
    Row("get", "/api/v1/telemetry/summary/", "viewer"),
    Row("get", "/api/v1/telemetry/compare/", "viewer", None, 400),  # a and b are required
    Row("get", "/api/v1/dead-letters/", "viewer"),
    Row("get", "/api/v1/dead-letters/{dead_letter}/", "viewer"),
    Row("get", "/api/v1/rollouts/", "viewer"),
    Row("get", "/api/v1/rollouts/{rollout}/", "viewer"),
    Row("post", "/api/v1/rollouts/", "operator", lambda: {"name": "x"}, 400),
    Row("post", "/api/v1/rollouts/{rollout}/start/", "operator"),
    Row("post", "/api/v1/rollouts/{rollout}/pause/", "operator", None, 409),  # a draft
    Row("post", "/api/v1/rollouts/{rollout}/resume/", "operator", None, 409),
    Row("post", "/api/v1/rollouts/{rollout}/abort/", "operator"),
    Row("post", "/api/v1/rollouts/{rollout}/rollback/", "operator", None, 409),
    Row("get", "/api/v1/gateways/", "viewer"),
    Row("get", "/api/v1/gateways/{gateway}/", "viewer"),
    Row("post", "/api/v1/gateways/", "operator",
        lambda: {"uid": "gw-new", "children": ["dev-a"]}, 201),
    Row("post", "/api/v1/gateways/{gateway}/children/", "operator",
        lambda: {"children": ["dev-a"]}, gateway_token=True),
    Row("post", "/api/v1/gateways/{gateway}/revoke/", "operator"),
]


@pytest.fixture
def seeded(enroll_body: dict[str, Any], device_group: Any, user_factory: Any) -> dict[str, str]:
    """Rows the parametrized paths point at."""
    from fleet.core.roles import Role
    from fleet.audit.models import AuditLog
    from fleet.devices.models import HardwareProfile
    from tests.conftest import post_enroll

    assert post_enroll({**enroll_body, "uid": "dev-a"}).status_code == 201
    spare = HardwareProfile.objects.create(**{**_profile_body(), "name": "spare"})
    from ota.models import Model, ModelVersion, Package
    from ota.signing.actions import ensure_signing_key

    key = ensure_signing_key()
    model = Model.objects.create(name="seeded")
    mv = ModelVersion.objects.create(model=model, version="1.0.0", source="uploaded",
                                     status="ready", sha256="0" * 64, size_bytes=1)
    package = Package.objects.create(
        model_version=mv, hardware_profile=HardwareProfile.objects.get(name="esp32-s3"), encoding=0, manifest=b"\xd2", signing_key=key,
        transfer_sha256="0" * 64, transfer_size=1, installed_size=1, expires_at=key.created_at,
    )
    from fleet.telemetry.models import DeadLetter

    dead = DeadLetter.objects.create(topic="fleet/v1/x/events", reason="CBOR_MALFORMED", size=1,
                                     payload=b"\xff")
    from ota.rollouts.models import Rollout

    rollout = Rollout.objects.create(name="seeded", model_version=mv, waves=[100])
    from fleet.devices.models import Gateway

    gateway = Gateway.objects.create(uid="gw-seeded")
    from ota.models import RevalidationJob

    revalidation = RevalidationJob.objects.create(hardware_profile=spare)
    return {
        "revalidation_job": str(revalidation.pk),
        "gateway": gateway.uid,
        "rollout": str(rollout.pk),
        "dead_letter": str(dead.pk),
        "model": str(model.pk),
        "model_version": str(mv.pk),
        "package": str(package.pk),
        "kid": key.kid,
        "device": Device.objects.get().uid,
        "token": str(EnrollmentToken.objects.get().pk),
        "group": str(device_group.pk),
        "audit": str(AuditLog.objects.first().pk),
        "user": str(user_factory(Role.VIEWER).pk),
        "spare_profile": str(spare.pk),
    }


@pytest.mark.parametrize("role", list(RANK))
@pytest.mark.parametrize("row", MATRIX, ids=[f"{r.method} {r.path}" for r in MATRIX])
def test_role_matrix(row: Row, role: str, api_client_for: Callable[[str], APIClient],
                     seeded: dict[str, str]) -> None:
    client = api_client_for(role)
    path = row.path.format(**seeded)
    response = getattr(client, row.method)(path, row.body() if row.body else None, format="json")
    if RANK[role] >= RANK[row.minimum]:
        assert response.status_code == row.ok, response.content
    elif role == "anonymous":
        assert response.status_code == 401
        assert response.json()["reason"] == "not_authenticated"
    else:
        assert response.status_code == 403
        assert response.json()["reason"] == "permission_denied"


@pytest.mark.parametrize("row", MATRIX, ids=[f"{r.method} {r.path}" for r in MATRIX])
def test_gateway_token_matrix(row: Row, seeded: dict[str, str]) -> None:
    """A gateway's own token opens the rows marked for it and gets 403 everywhere else."""
    from fleet.devices.credentials import hash_secret, new_gateway_token
    from fleet.devices.models import Gateway

    token = new_gateway_token()
    Gateway.objects.filter(uid=seeded["gateway"]).update(api_token_hash=hash_secret(token))
    client = APIClient(HTTP_AUTHORIZATION=f"Gateway {token}")
    path = row.path.format(**seeded)
    response = getattr(client, row.method)(path, row.body() if row.body else None, format="json")
    if row.gateway_token:
        # The route is open to the token; the action then wants the child's own proof.
        assert (response.status_code, response.json()["reason"]) == (403, "children_refused")
    else:
        assert response.status_code == 403, response.content
        assert response.json()["reason"] == "gateway_token_scope"


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_schema_and_docs_are_public(path: str) -> None:
    assert APIClient().get(path).status_code == 200


def test_docs_use_local_assets() -> None:
    html = APIClient().get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    assert not re.search(r"https?://(cdn|unpkg|cdnjs)", html)


def test_session_auth_works_for_the_console(user_factory: Any) -> None:
    from fleet.core.roles import Role

    user = user_factory(Role.VIEWER)
    client = APIClient()
    assert client.login(username=user.username, password="correct-horse-battery")
    assert client.get("/api/v1/devices/").status_code == 200


def test_token_auth_works_for_scripts(user_factory: Any) -> None:
    from rest_framework.authtoken.models import Token

    from fleet.core.roles import Role

    token = Token.objects.create(user=user_factory(Role.VIEWER))
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/devices/").status_code == 200
    assert APIClient(HTTP_AUTHORIZATION="Token nope").get("/api/v1/devices/").status_code == 401


def _api_routes() -> set[str]:
    routes: set[str] = set()

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            if hasattr(p, "url_patterns"):
                walk(p.url_patterns, prefix + str(p.pattern))
            else:
                routes.add(prefix + str(p.pattern))

    walk(get_resolver().url_patterns, "")
    return {r for r in routes if r.startswith("api/v1/") and "format" not in r}


def _normalise(path: str) -> str:
    """Reduce a path or route pattern to its shape: every id segment becomes X."""
    path = re.sub(r"\(\?P<[^>]+>[^)]+\)", "X", path.replace("^", "").replace("$", ""))
    segments = path.strip("/").split("/")
    return "/".join("X" if re.fullmatch(r"\{\w+\}|\d+|X", s) else s for s in segments)


def test_matrix_covers_every_route() -> None:
    covered = {_normalise(r.path) for r in MATRIX} | {"api/v1/enroll", "api/v1/enroll/challenge"}
    routes = {_normalise(r) for r in _api_routes()}
    missing = sorted(r for r in routes if r not in covered)
    assert not missing, f"endpoints with no row in the authorization matrix: {missing}"


def test_deleting_a_profile_in_use_is_a_conflict_not_a_crash(admin_client: APIClient,
                                                             seeded: dict[str, str]) -> None:
    from fleet.devices.models import HardwareProfile

    in_use = HardwareProfile.objects.get(name="stm32f746")  # the seeded device's profile
    response = admin_client.delete(f"/api/v1/hardware-profiles/{in_use.pk}/")
    assert (response.status_code, response.json()["reason"]) == (409, "in_use")
    assert HardwareProfile.objects.filter(pk=in_use.pk).exists()
