"""The serial gateway with X.509 broker access, end to end.

Devices have certificates only; a serial gateway has none. An operator provisions the gateway
over the API and is handed ``MQTT_GATEWAY_URL`` (the broker's TLS password listener) with the
gateway's password; the gateway program (``python -m device_sdk.gateway``) logs in there,
meets a simulated MCU over the link, enrolls it with its signed proof relayed with the gateway
token (X.509 backend: the ACL makes it the gateway's child), and bridges it: the child's
inference events reach the real worker's database. The listener makes the username the client
id, so the gateway's password cannot take a device's session.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from device_sdk.client.identity import enroll
from device_sdk.protocol import link
from device_sdk.protocol.events import Event, EventBatch, encode_batch
from fleet.core.roles import Role
from fleet.devices.models import Device, Gateway
from fleet.telemetry.models import Event as StoredEvent
from tests.device_sdk.conftest import X509Fleet
from tests.device_sdk.gateway.fake_mcu import CAPS, FakeMcu

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

T0 = 1_767_225_600_000
NOT_AUTHORIZED = 135


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` on a fresh connection (the live server and the worker write) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        connection.close()
        if result := check():
            return result
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


class Mqtt:
    """A paho MQTT 5 client on one of the broker's TLS listeners, recording what happens."""

    def __init__(self, fleet: X509Fleet, port: int, client_id: str, *,
                 password: tuple[str, str] | None = None,
                 cert: tuple[str, str] | None = None) -> None:
        self.connacks: list[int] = []
        self.disconnects: list[float] = []
        self.acks: dict[int, int] = {}
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if password is not None:
            self.client.username_pw_set(*password)
        self.client.tls_set(ca_certs=str(fleet.broker.ca_cert),
                            certfile=cert[0] if cert else None, keyfile=cert[1] if cert else None)
        self.client.on_connect = lambda c, u, f, rc, p: (self.connacks.append(rc.value),
                                                         self.ready.set())
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.append(
            time.monotonic())
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.client.reconnect_delay_set(0.5, 2)
        self.client.connect(fleet.broker.host, port)
        self.client.loop_start()
        assert self.ready.wait(10) and self.connacks[0] == 0, self.connacks

    def publish(self, topic: str) -> int:
        """Publish at QoS 1; return the PUBACK's reason code (>= 128: refused)."""
        mid = self.client.publish(topic, b"x", qos=1).mid
        deadline = time.monotonic() + 10
        while mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_gateway_logs_in_on_its_listener_bridges_a_child_to_the_database_and_takes_no_device_id(
    x509_fleet: X509Fleet, enrollment_token_factory: Callable[..., str], user_factory: Any,
    gateway_process: Callable[..., subprocess.Popen[str]], tmp_path: Path,
) -> None:
    operator = user_factory(Role.OPERATOR)
    api = APIClient(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=operator).key}")
    gw, child = f"gw-{secrets.token_hex(3)}", f"mcu-{secrets.token_hex(3)}"
    answer = api.post("/api/v1/gateways/", {"uid": gw, "children": []}, format="json")
    assert answer.status_code == 201, answer.json()
    mqtt_answer = answer.json()["mqtt"]
    # The gateways' password listener, not the certificate-only device listener.
    assert mqtt_answer["url"] == x509_fleet.broker.tls_url
    assert mqtt_answer["username"] == gw and mqtt_answer["credential"]
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({
        **answer.json(), "server": x509_fleet.server, "hardware": "qemu-mps2-an385",
        "claim_token": enrollment_token_factory(max_uses=3)}))
    config.chmod(0o600)

    mcu = FakeMcu()
    process = gateway_process("--port", mcu.url, "--config", str(config))
    try:
        mcu.wait_connected()
        mcu.boot(child)
        # Enrolled through the gateway (its relayed, signed request), and its child.
        device = eventually(lambda: Device.objects.filter(uid=child, gateways__uid=gw).first(),
                            f"{child} enrolled as {gw}'s child")
        assert device.enrolled_via.uid == gw
        assert device.capabilities["ops"] == CAPS.ops
        # The gateway's own status came over its login: the worker marked it online.
        eventually(lambda: Gateway.objects.get(uid=gw).state == "online", f"{gw} online")

        batch = EventBatch(1, T0, 0, [Event(T0, 2, 180, 4), Event(T0 + 40, 3, 99, 5)])
        mcu.send(link.Kind.EVENTS, encode_batch(batch))
        stored = eventually(
            lambda: list(StoredEvent.objects.filter(device_id=device.pk).order_by("ts")
                         .values_list("label", "score", "latency_100us")) or None,
            f"{child}'s events in the database")
        assert stored == [(2, 180, 4), (3, 99, 5)]
    finally:
        process.send_signal(signal.SIGTERM)
        exit_status = process.wait(timeout=15)
        mcu.close()
    assert exit_status == 0

    # A device with its certificate on the device listener. The gateway's password with that
    # device's uid as client id logs in as the gateway (its uid is the client id): the device's
    # session stays, and the login cannot use the device's topics. (After the gateway program
    # stopped: the same login would take its session over, by design.)
    token = enrollment_token_factory(max_uses=1)
    identity = enroll(x509_fleet.server, token, state_dir=tmp_path / "direct",
                      hardware="stm32f746", capabilities=CAPS, uid="x509-direct-1")
    direct = Mqtt(x509_fleet, x509_fleet.device_port, "x509-direct-1",
                  cert=(identity.mqtt.cert_file or "", identity.mqtt.key_file or ""))
    impostor = Mqtt(x509_fleet, x509_fleet.broker.tls_port, "x509-direct-1",
                    password=(gw, mqtt_answer["credential"]))
    try:
        time.sleep(0.5)
        assert direct.disconnects == []  # its session was not taken over
        assert direct.publish("fleet/v1/x509-direct-1/events") < 128
        assert impostor.publish("fleet/v1/x509-direct-1/events") == NOT_AUTHORIZED
        assert impostor.publish(f"fleet/v1/{child}/events") < 128  # it is the gateway
    finally:
        impostor.close()
        direct.close()
