"""Serial gateways over the API: one broker identity for the children it is given, nothing else.

The broker tests drive the session Mosquitto's dynamic security through the server, then log
in with the credential the API handed out, over TLS with the CA it handed out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from fleet.audit.models import AuditLog
from fleet.broker.configured import reset_broker_access
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import Device, Gateway

NOT_AUTHORIZED = 135


@pytest.fixture
def broker_settings(broker: MosquittoInstance) -> Iterator[None]:
    """Point the server at the session broker's dynamic security."""
    reset_broker_access()
    with override_settings(
        BROKER_ACCESS="dynsec", MQTT_URL=broker.url, MQTT_DEVICE_URL=broker.tls_url,
        MQTT_ADMIN_USERNAME=broker.admin_username, MQTT_ADMIN_PASSWORD=broker.admin_password,
        MQTT_CA_FILE=str(broker.ca_cert),
    ):
        yield
    reset_broker_access()


@pytest.fixture
def ca_file(tmp_path: Path) -> Callable[[str], str]:
    """Write a CA PEM from an API answer to a file; return its path."""

    def write(pem: str) -> str:
        path = tmp_path / "ca.pem"
        path.write_text(pem)
        return str(path)

    return write


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_gateway_credential_speaks_for_its_children_only(
    broker_settings: None, enrolled: Callable[[str], str], operator_client: APIClient,
    probe: Any, uid: Callable[[str], str], ca_file: Callable[[str], str],
) -> None:
    """The one-time credential logs in over TLS; children's topics pass, others get 135."""
    c1, c2, gw = enrolled(uid("c1")), enrolled(uid("c2")), uid("gw")
    response = operator_client.post("/api/v1/gateways/", {"uid": gw, "children": [c1]},
                                    format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["children"] == [c1] and body["created"] is True
    mqtt = body["mqtt"]
    assert mqtt["url"].startswith("mqtts://") and mqtt["username"] == gw
    assert "BEGIN CERTIFICATE" in mqtt["ca_cert"]
    gateway = probe(gw, mqtt["credential"], tls=True, ca_certs=ca_file(mqtt["ca_cert"]))
    assert gateway.connect().value == 0
    assert gateway.publish(f"fleet/v1/{c1}/events").value in (0, 16)
    assert gateway.subscribe(f"fleet/v1/{c1}/ota/offer").value == 1
    assert gateway.publish(f"fleet/v1/{c2}/events").value == NOT_AUTHORIZED
    assert gateway.publish(f"fleet/v1/{gw}/events").value == NOT_AUTHORIZED

    detail = operator_client.get(f"/api/v1/gateways/{gw}/").json()
    assert "mqtt" not in detail and detail["children"] == [c1]
    assert AuditLog.objects.filter(action="gateway.create", object_repr=gw).exists()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_adding_children_keeps_the_password(
    broker_settings: None, enrolled: Callable[[str], str], operator_client: APIClient,
    probe: Any, uid: Callable[[str], str], ca_file: Callable[[str], str],
) -> None:
    """A gateway that enrolled a new MCU adds it; the same credential then reaches it."""
    c1, c2, gw = enrolled(uid("c1")), enrolled(uid("c2")), uid("gw")
    mqtt = operator_client.post("/api/v1/gateways/", {"uid": gw, "children": [c1]},
                                format="json").json()["mqtt"]
    ca = ca_file(mqtt["ca_cert"])
    before = probe(gw, mqtt["credential"], tls=True, ca_certs=ca)
    assert before.connect().value == 0

    response = operator_client.post(f"/api/v1/gateways/{gw}/children/", {"children": [c2]},
                                    format="json")
    assert response.status_code == 200, response.json()
    assert sorted(response.json()["children"]) == sorted([c1, c2])
    assert "mqtt" not in response.json()
    # The broker drops the session once so the new grants apply; the old password still works.
    assert before.disconnected.wait(5)
    after = probe(gw, mqtt["credential"], tls=True, ca_certs=ca)
    assert after.connect().value == 0
    assert after.publish(f"fleet/v1/{c2}/ota/report").value in (0, 16)
    assert after.publish(f"fleet/v1/{c1}/ota/report").value in (0, 16)

    again = operator_client.post(f"/api/v1/gateways/{gw}/children/", {"children": [c2]},
                                 format="json")
    assert again.status_code == 200  # idempotent: nothing changes, nobody is disconnected
    assert AuditLog.objects.filter(action="gateway.add_children").count() == 1


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_reprovision_swaps_children_and_password_and_revoke_kicks(
    broker_settings: None, enrolled: Callable[[str], str], operator_client: APIClient,
    probe: Any, uid: Callable[[str], str], ca_file: Callable[[str], str],
) -> None:
    """POST again: new children, a new password (the old one stops working); revoke: out."""
    c1, c2, gw = enrolled(uid("c1")), enrolled(uid("c2")), uid("gw")
    first = operator_client.post("/api/v1/gateways/", {"uid": gw, "children": [c1]},
                                 format="json").json()["mqtt"]
    response = operator_client.post("/api/v1/gateways/", {"uid": gw, "children": [c2]},
                                    format="json")
    assert response.status_code == 200 and response.json()["created"] is False
    second = response.json()["mqtt"]
    assert second["credential"] != first["credential"]
    ca = ca_file(second["ca_cert"])
    with pytest.raises(AssertionError):
        assert probe(gw, first["credential"], tls=True, ca_certs=ca).connect().value == 0
    gateway = probe(gw, second["credential"], tls=True, ca_certs=ca)
    assert gateway.connect().value == 0
    assert gateway.publish(f"fleet/v1/{c1}/events").value == NOT_AUTHORIZED
    assert gateway.publish(f"fleet/v1/{c2}/events").value in (0, 16)

    revoked = operator_client.post(f"/api/v1/gateways/{gw}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert gateway.disconnected.wait(5), "revoked gateway still connected"
    with pytest.raises(AssertionError):
        assert probe(gw, second["credential"], tls=True, ca_certs=ca).connect().value == 0
    refused = operator_client.post(f"/api/v1/gateways/{gw}/children/", {"children": [c1]},
                                   format="json")
    assert (refused.status_code, refused.json()["reason"]) == (409, "gateway_revoked")
    assert Device.objects.filter(uid__in=[c1, c2], revoked_at__isnull=True).count() == 2


@pytest.mark.django_db
def test_unknown_children_and_taken_ids_are_refused_with_nothing_written(
    enrolled: Callable[[str], str], operator_client: APIClient,
) -> None:
    """Children must be enrolled devices; a gateway cannot take a device's id."""
    child = enrolled("dev-known")
    response = operator_client.post("/api/v1/gateways/",
                                    {"uid": "gw-1", "children": [child, "dev-nope"]}, format="json")
    assert (response.status_code, response.json()["reason"]) == (400, "unknown_children")
    assert "dev-nope" in response.json()["detail"]
    response = operator_client.post("/api/v1/gateways/", {"uid": child}, format="json")
    assert (response.status_code, response.json()["reason"]) == (409, "uid_taken")
    response = operator_client.post("/api/v1/gateways/", {"uid": "pkg"}, format="json")
    assert (response.status_code, response.json()["reason"]) == (400, "invalid_uid")
    assert not Gateway.objects.exists()
    assert not AuditLog.objects.filter(action__startswith="gateway.").exists()


@pytest.mark.slow  # three 5 s broker timeouts
@pytest.mark.django_db(transaction=True)
def test_broker_down_answers_503_and_writes_nothing(
    enrolled: Callable[[str], str], operator_client: APIClient, unused_port: int,
) -> None:
    """Provisioning and adding children need the broker: without it, 503 and no change."""
    child, other = enrolled("dev-one"), enrolled("dev-two")
    gateway = Gateway.objects.create(uid="gw-down")
    gateway.children.add(Device.objects.get(uid=child))
    reset_broker_access()
    try:
        with override_settings(BROKER_ACCESS="dynsec", MQTT_ADMIN_PASSWORD="x",
                               MQTT_URL=f"mqtt://127.0.0.1:{unused_port}"):
            created = operator_client.post("/api/v1/gateways/", {"uid": "gw-new"}, format="json")
            added = operator_client.post("/api/v1/gateways/gw-down/children/",
                                         {"children": [other]}, format="json")
            revoked = operator_client.post("/api/v1/gateways/gw-down/revoke/")
    finally:
        reset_broker_access()
    for response in (created, added, revoked):
        assert (response.status_code, response.json()["reason"]) == (503, "broker_unavailable")
    assert list(Gateway.objects.values_list("uid", flat=True)) == ["gw-down"]
    gateway.refresh_from_db()
    assert list(gateway.children.values_list("uid", flat=True)) == [child]
    assert gateway.revoked_at is None
    assert not AuditLog.objects.filter(action__startswith="gateway.").exists()


@pytest.mark.django_db
def test_viewers_list_gateways_but_cannot_provision(
    api_client_for: Callable[[str], APIClient], enrolled: Callable[[str], str],
) -> None:
    """Viewers read; only operators and admins write (the matrix pins every route)."""
    operator = api_client_for("operator")
    assert operator.post("/api/v1/gateways/", {"uid": "gw-a", "children": [enrolled("dev-c")]},
                         format="json").status_code == 201
    viewer = api_client_for("viewer")
    listed = viewer.get("/api/v1/gateways/").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert [(g["uid"], g["children"]) for g in rows] == [("gw-a", ["dev-c"])]
    assert viewer.post("/api/v1/gateways/", {"uid": "gw-b"}, format="json").status_code == 403

