"""The console's administration pages with the Django client: who may see and do what, and
that writes go through the actions (audited)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from fleet.audit.models import AuditLog
from fleet.core.roles import Role, role_of
from fleet.devices.models import Gateway, HardwareProfile
from fleet.telemetry.models import DeadLetter
from ota.models import SigningKey
from ota.signing.actions import ensure_signing_key

pytestmark = pytest.mark.django_db

READ_PAGES = ["/console/signing-keys/", "/console/hardware-profiles/",
              "/console/hardware-profiles/stm32f746/", "/console/gateways/",
              "/console/dead-letters/"]
PROFILE = {"name": "rp2040", "display_name": "Raspberry Pi Pico", "mcu": "RP2040 (M0+)",
           "ram_bytes": 270336, "flash_bytes": 2097152, "arena_ram_bytes": 131072,
           "model_slot_bytes": 524288, "kernel_set": "reference", "pointer_bits": 32,
           "ota_chunk_bytes": 1024, "supported_ops": "fully_connected, SOFTMAX\nRESHAPE",
           "description": ""}


@pytest.fixture
def admin_pages(fleet: Any) -> Any:
    """The seeded fleet plus a signing key, a gateway with a child and two dead letters."""
    ensure_signing_key()
    gateway = Gateway.objects.create(uid="gw-1", name="line gateway")
    gateway.children.set([fleet.devices["dev-a1"]])
    DeadLetter.objects.create(topic="fleet/v1/dev-a1/events", device_uid="dev-a1",
                              reason="DECODE_ERROR", detail="bad CBOR", size=12,
                              payload=b"\xff\x00garbage")
    DeadLetter.objects.create(topic="fleet/v1/ghost/events", device_uid="ghost",
                              reason="UNKNOWN_DEVICE", size=40, payload=b"\x84")
    return fleet


@pytest.mark.parametrize("path", READ_PAGES)
@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_reads_the_new_pages(client_for: Callable[[str], Client], admin_pages: Any,
                                        path: str, role: str) -> None:
    assert client_for(role).get(path).status_code == 200


@pytest.mark.parametrize("path", READ_PAGES + ["/console/users/"])
def test_anonymous_is_sent_to_login(client: Client, admin_pages: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302 and response.headers["Location"].startswith(
        "/console/login/")


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_users_page_is_for_admins_only(client_for: Callable[[str], Client], role: str) -> None:
    response = client_for(role).get("/console/users/")
    assert response.status_code == 403
    assert "needs the admin role" in response.content.decode()
    html = client_for(role).get("/console/").content.decode()
    assert 'href="/console/users/"' not in html and 'href="/console/gateways/"' in html


def test_admin_writes_need_the_admin_role(client_for: Callable[[str], Client],
                                          admin_pages: Any) -> None:
    """Operators may not rotate or retire keys, create or edit profiles, or manage users."""
    key = SigningKey.objects.get()
    operator = client_for("operator")
    victim = get_user_model().objects.exclude(is_superuser=True).first()
    writes = [("/console/signing-keys/rotate/", {}),
              (f"/console/signing-keys/{key.kid}/retire/", {}),
              ("/console/hardware-profiles/new/", PROFILE),
              ("/console/hardware-profiles/stm32f746/", {**PROFILE, "name": "stm32f746"}),
              ("/console/users/", {"username": "x", "role": "admin", "password": "x" * 12}),
              (f"/console/users/{victim.pk}/role/", {"role": "admin"}),
              (f"/console/users/{victim.pk}/active/", {"active": "0"})]
    before = AuditLog.objects.count()
    for path, body in writes:
        assert operator.post(path, body).status_code == 403, path
    assert AuditLog.objects.count() == before
    assert SigningKey.objects.count() == 1 and not HardwareProfile.objects.filter(
        name="rp2040").exists()


def test_gateway_writes_need_an_operator(client_for: Callable[[str], Client],
                                         admin_pages: Any) -> None:
    viewer = client_for("viewer")
    assert viewer.post("/console/gateways/", {"uid": "gw-2"}).status_code == 403
    assert viewer.post("/console/gateways/gw-1/revoke/").status_code == 403
    assert not Gateway.objects.get(uid="gw-1").revoked


def test_admin_rotates_then_retires_a_key_but_never_the_last(
        client_for: Callable[[str], Client], admin_pages: Any) -> None:
    admin = client_for("admin")
    first = SigningKey.objects.get()
    page = admin.get("/console/signing-keys/").content.decode()
    assert "only active key" in page and "retire-key" not in page
    response = admin.post("/console/signing-keys/rotate/", follow=True)
    assert "is pending" in response.content.decode()
    second = SigningKey.objects.exclude(pk=first.pk).get()
    assert second.introduced_by_id == first.pk
    page = admin.get("/console/signing-keys/").content.decode()
    assert "activate-key" in page and 'class="num trust-share"' in page  # the share shown
    response = admin.post(f"/console/signing-keys/{second.kid}/activate/", follow=True)
    assert "Not activated" in response.content.decode()  # no device reported trusting it
    response = admin.post(f"/console/signing-keys/{second.kid}/activate/", {"force": "1"},
                          follow=True)
    assert "is active; new packages use it" in response.content.decode()
    admin.post(f"/console/signing-keys/{first.kid}/retire/")
    first.refresh_from_db()
    assert first.state == "retired"
    response = admin.post(f"/console/signing-keys/{second.kid}/retire/", follow=True)
    assert "Not retired" in response.content.decode()
    assert AuditLog.objects.filter(action__startswith="signing_key").count() >= 2


def test_admin_creates_and_edits_a_profile_with_audit(client_for: Callable[[str], Client],
                                                      admin_pages: Any) -> None:
    admin = client_for("admin")
    response = admin.post("/console/hardware-profiles/new/", PROFILE)
    assert response.status_code == 302
    profile = HardwareProfile.objects.get(name="rp2040")
    assert profile.supported_ops == ["FULLY_CONNECTED", "RESHAPE", "SOFTMAX"]
    edit = {**PROFILE, "arena_ram_bytes": 65536, "name": "ignored"}
    assert admin.post("/console/hardware-profiles/rp2040/", edit).status_code == 302
    profile.refresh_from_db()
    assert profile.arena_ram_bytes == 65536 and profile.name == "rp2040"
    update = AuditLog.objects.get(action="hardware_profile.update")
    assert update.before == {"arena_ram_bytes": 131072} and update.after == {
        "arena_ram_bytes": 65536}
    bad = admin.post("/console/hardware-profiles/rp2040/", {**edit, "arena_ram_bytes": 10**7})
    assert bad.status_code == 400 and "cannot exceed" in bad.content.decode()


def test_operator_provisions_reprovisions_and_revokes_a_gateway(
        client_for: Callable[[str], Client], admin_pages: Any) -> None:
    operator = client_for("operator")
    response = operator.post("/console/gateways/", {"uid": "gw-2", "name": "bench",
                                                     "children": "dev-a2, dev-a3"})
    html = response.content.decode()
    assert response.status_code == 200 and 'data-secret="password"' in html
    assert response["Cache-Control"] == "no-store"
    gateway = Gateway.objects.get(uid="gw-2")
    assert sorted(gateway.children.values_list("uid", flat=True)) == ["dev-a2", "dev-a3"]
    detail = operator.post("/console/gateways/gw-2/", {"uid": "gw-2", "name": "bench",
                                                        "children": "dev-a3"})
    assert "new password and token" in detail.content.decode()
    assert list(gateway.children.values_list("uid", flat=True)) == ["dev-a3"]
    refused = operator.post("/console/gateways/", {"uid": "dev-a1", "children": ""})
    assert refused.status_code == 400 and "a gateway needs its own" in refused.content.decode()
    operator.post("/console/gateways/gw-2/revoke/")
    gateway.refresh_from_db()
    assert gateway.revoked
    assert {"gateway.create", "gateway.reprovision", "gateway.revoke"} <= set(
        AuditLog.objects.filter(object_type="devices.gateway").values_list("action", flat=True))


def test_dead_letters_filter_by_reason_and_device(client_for: Callable[[str], Client],
                                                  admin_pages: Any) -> None:
    viewer = client_for("viewer")
    html = viewer.get("/console/dead-letters/").content.decode()
    assert html.count("<tr data-reason") == 2
    html = viewer.get("/console/dead-letters/?reason=DECODE_ERROR").content.decode()
    assert html.count("<tr data-reason") == 1 and "ff 00 67" in html
    html = viewer.get("/console/dead-letters/?device=ghost").content.decode()
    assert html.count("<tr data-reason") == 1 and 'data-device="ghost"' in html
    html = viewer.get("/console/dead-letters/?device=nobody").content.decode()
    assert "No refused message matches" in html


def test_admin_manages_users_but_not_the_last_admin(client_for: Callable[[str], Client],
                                                    user_factory: Callable) -> None:
    admin_client = client_for("admin")
    response = admin_client.post("/console/users/", {"username": "carol", "email": "",
                                                      "role": "operator",
                                                      "password": "a-long-password"})
    assert response.status_code == 302
    carol = get_user_model().objects.get(username="carol")
    assert role_of(carol) == Role.OPERATOR
    admin_client.post(f"/console/users/{carol.pk}/role/", {"role": "viewer"})
    carol = get_user_model().objects.get(pk=carol.pk)
    assert role_of(carol) == Role.VIEWER
    admin_client.post(f"/console/users/{carol.pk}/active/", {"active": "0"})
    carol.refresh_from_db()
    assert not carol.is_active
    assert Client().login(username="carol", password="a-long-password") is False
    actions = set(AuditLog.objects.filter(object_id=str(carol.pk)).values_list("action",
                                                                              flat=True))
    assert {"user.create", "user.change_role", "user.deactivate"} <= actions
    # The admin who is logged in is the only admin: neither demoted nor deactivated.
    me = get_user_model().objects.get(groups__name="admin")
    response = admin_client.post(f"/console/users/{me.pk}/role/", {"role": "viewer"},
                                 follow=True)
    assert "the last admin" in response.content.decode()
    response = admin_client.post(f"/console/users/{me.pk}/active/", {"active": "0"},
                                 follow=True)
    assert "cannot deactivate your own account" in response.content.decode()
    assert role_of(get_user_model().objects.get(pk=me.pk)) == Role.ADMIN
