"""Who may see and do what in the console: login everywhere, viewers read only, operators act."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from fleet.audit.models import AuditLog
from fleet.devices.choices import DeviceState, TokenState
from fleet.devices.credentials import hash_secret
from fleet.devices.models import Device, EnrollmentToken

pytestmark = pytest.mark.django_db

PAGES = ["/console/", "/console/devices/", "/console/enrollment/", "/console/models/",
         "/console/rollouts/", "/console/telemetry/", "/console/audit/"]


def write_urls(fleet: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every console URL that changes state, with a body that would succeed for an operator."""
    token = EnrollmentToken.objects.get(name="line 3")
    return [
        ("/console/enrollment/", {"name": "x", "max_uses": 1, "expires_in": "24h"}),
        (f"/console/enrollment/{token.pk}/revoke/", {}),
        ("/console/devices/dev-a1/revoke/", {}),
        ("/console/devices/dev-a1/edit/", {"name": "renamed", "group": "", "tags": ""}),
        ("/console/models/new/", {"name": "new-model"}),
        ("/console/models/upload/", {"model": "kws", "version": "9.0.0"}),
        (f"/console/models/versions/{fleet.v1.pk}/packages/",
         {"hardware_profile": fleet.profile.name}),
    ]


def test_root_redirects_to_the_console(client: Client) -> None:
    assert client.get("/").headers["Location"] == "/console/"


@pytest.mark.parametrize("path", PAGES + ["/console/devices/dev-a1/"])
def test_anonymous_visit_leads_to_the_login_form(client: Client, fleet: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == f"/console/login/?next={path}"


def test_login_form_has_the_fixed_field_names(client: Client) -> None:
    html = client.get("/console/login/").content.decode()
    assert re.search(r'<input[^>]+name="username"', html)
    assert re.search(r'<input[^>]+name="password"[^>]+type="password"|'
                     r'<input[^>]+type="password"[^>]+name="password"', html)


def test_login_with_good_credentials_opens_the_overview(client: Client,
                                                        user_factory: Callable) -> None:
    from fleet.core.roles import Role

    user = user_factory(Role.VIEWER)
    response = client.post("/console/login/", {"username": user.username,
                                               "password": "correct-horse-battery"})
    assert response.status_code == 302 and response.headers["Location"] == "/console/"
    assert client.get("/console/").status_code == 200


def test_login_with_a_wrong_password_is_refused(client: Client, user_factory: Callable) -> None:
    from fleet.core.roles import Role

    user = user_factory(Role.VIEWER)
    response = client.post("/console/login/", {"username": user.username, "password": "nope"})
    assert response.status_code == 200
    assert "alert-error" in response.content.decode()


def test_logout_is_a_post_and_ends_the_session(client_for: Callable[[str], Client]) -> None:
    client = client_for("viewer")
    response = client.post("/console/logout/")
    assert response.headers["Location"] == "/console/login/"
    assert client.get("/console/").status_code == 302


def test_user_without_a_role_is_refused(client: Client, django_user_model: Any) -> None:
    client.force_login(django_user_model.objects.create_user("nobody", password="x" * 12))
    response = client.get("/console/")
    assert response.status_code == 403
    assert "no console role" in response.content.decode()


@pytest.mark.parametrize("path", PAGES + ["/console/devices/dev-a1/"])
def test_viewer_sees_every_page_without_action_buttons(
    client_for: Callable[[str], Client], fleet: Any, path: str
) -> None:
    html = client_for("viewer").get(path).content.decode()
    assert 'data-action="' not in html
    # The only form a viewer may post is the sign-out form.
    posts = re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', html)
    assert posts == ["/console/logout/"]


def test_viewer_sees_no_version_actions(client_for: Callable[[str], Client], fleet: Any) -> None:
    html = client_for("viewer").get(f"/console/models/versions/{fleet.v1.pk}/").content.decode()
    assert 'data-action="' not in html


def test_operator_sees_the_action_buttons(client_for: Callable[[str], Client],
                                          fleet: Any) -> None:
    client = client_for("operator")
    assert 'data-action="create-token"' in client.get("/console/enrollment/").content.decode()
    assert 'data-action="revoke-token"' in client.get("/console/enrollment/").content.decode()
    assert 'data-action="revoke-device"' in client.get(
        "/console/devices/dev-a1/").content.decode()
    assert 'data-action="upload-version"' in client.get("/console/models/").content.decode()
    assert 'data-action="build-package"' in client.get(
        f"/console/models/versions/{fleet.v1.pk}/").content.decode()


def test_viewer_posts_are_refused_and_change_nothing(client_for: Callable[[str], Client],
                                                     fleet: Any) -> None:
    client = client_for("viewer")
    audit_before = AuditLog.objects.count()
    tokens_before = EnrollmentToken.objects.count()
    for url, body in write_urls(fleet):
        response = client.post(url, body)
        assert response.status_code == 403, url
    assert AuditLog.objects.count() == audit_before
    assert EnrollmentToken.objects.count() == tokens_before
    assert Device.objects.get(uid="dev-a1").state == DeviceState.ONLINE


def test_anonymous_posts_are_sent_to_login(client: Client, fleet: Any) -> None:
    for url, body in write_urls(fleet):
        response = client.post(url, body)
        assert response.status_code == 302 and "/console/login/" in response.headers["Location"]


def test_operator_creates_a_token_and_sees_it_once(client_for: Callable[[str], Client],
                                                   fleet: Any) -> None:
    client = client_for("operator")
    response = client.post("/console/enrollment/", {
        "name": "batch 7", "max_uses": 25, "expires_in": "7d", "group": "field",
        "hardware_profile": "stm32f746"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    first = response.content.decode()
    plain = re.search(r'<code id="new-token" data-token>([^<]+)</code>', first).group(1)
    token = EnrollmentToken.objects.get(name="batch 7")
    assert token.token_hash == hash_secret(plain)
    assert (token.max_uses, token.group.name, token.hardware_profile.name) == (
        25, "field", "stm32f746")
    assert "data-copy" in first and "will not be shown again" in first
    assert plain not in str(dict(client.session.items()))  # never stored, not even there
    again = client.get("/console/enrollment/").content.decode()
    assert plain not in again and token.prefix in again
    assert AuditLog.objects.filter(action="enrollment_token.create",
                                   object_id=str(token.pk)).exists()


def test_bad_token_form_is_answered_with_errors(client_for: Callable[[str], Client]) -> None:
    response = client_for("operator").post("/console/enrollment/", {"max_uses": 0,
                                                                    "expires_in": "forever"})
    assert response.status_code == 400
    assert EnrollmentToken.objects.count() == 0


def test_operator_revokes_a_token(client_for: Callable[[str], Client], fleet: Any) -> None:
    token = EnrollmentToken.objects.get(name="line 3")
    response = client_for("operator").post(f"/console/enrollment/{token.pk}/revoke/")
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.state == TokenState.REVOKED


def test_operator_revokes_a_device(client_for: Callable[[str], Client], fleet: Any) -> None:
    client = client_for("operator")
    response = client.post("/console/devices/dev-a1/revoke/")
    assert response.headers["Location"] == "/console/devices/dev-a1/"
    device = Device.objects.get(uid="dev-a1")
    assert device.state == DeviceState.REVOKED and device.revoked
    html = client.get("/console/devices/dev-a1/").content.decode()
    assert 'data-action="revoke-device"' not in html and "Revoked" in html


def test_operator_edits_a_device(client_for: Callable[[str], Client], fleet: Any) -> None:
    client_for("operator").post("/console/devices/dev-a1/edit/", {
        "name": "hall sensor", "group": "field", "tags": "south, roof"})
    device = Device.objects.get(uid="dev-a1")
    assert device.name == "hall sensor" and device.group.name == "field"
    assert sorted(device.tags.values_list("name", flat=True)) == ["roof", "south"]


def test_get_on_a_write_url_changes_nothing(client_for: Callable[[str], Client],
                                            fleet: Any) -> None:
    client = client_for("operator")
    assert client.get("/console/devices/dev-a1/revoke/").status_code == 405
    assert Device.objects.get(uid="dev-a1").state == DeviceState.ONLINE
