"""X.509 broker access end to end: the SDK enrolls over HTTP against the live server, keeps the
client certificate the answer carries for its own key, connects to Mosquitto's device listener
with it (no password), and its events reach the real worker's database; a device cannot use
another device's topics; revocation cuts it off within 5 s and its certificate stays refused.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from device_sdk.client import DeviceClient
from device_sdk.client.identity import DeviceIdentity, EnrollmentError, enroll
from device_sdk.protocol.events import Event
from device_sdk.protocol.status import Capabilities
from tests.device_sdk.conftest import X509Fleet

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CAPS = Capabilities(firmware_version="x509 1.0", tflm_version="tflite-micro test",
                    ops=["FULLY_CONNECTED"], arena_bytes=65_536, slot_bytes=262_144,
                    pointer_bits=64)
NOT_AUTHORIZED = 135


def enroll_device(fleet: X509Fleet, state: Path, token: str, uid: str) -> DeviceIdentity:
    return enroll(fleet.server, token, state_dir=state, hardware="stm32f746", capabilities=CAPS,
                  uid=uid)


def raw_client(fleet: X509Fleet, identity: DeviceIdentity, client_id: str) -> tuple[Any, dict]:
    """A paho client presenting ``identity``'s certificate; returns it and what it records."""
    seen: dict[str, Any] = {"connack": [], "acks": {}, "ready": threading.Event()}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=identity.mqtt.ca_file, certfile=identity.mqtt.cert_file,
                   keyfile=identity.mqtt.key_file)
    client.on_connect = lambda c, u, f, rc, p: (seen["connack"].append(rc.value),
                                                seen["ready"].set())
    client.on_publish = lambda c, u, mid, rc, p: seen["acks"].__setitem__(mid, rc.value)
    client.connect("127.0.0.1", fleet.device_port)
    client.loop_start()
    return client, seen


def publish_ack(client: Any, seen: dict, topic: str) -> int:
    mid = client.publish(topic, b"x", qos=1).mid
    deadline = time.monotonic() + 5
    while mid not in seen["acks"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(seen["acks"][mid])


def test_device_enrolls_connects_with_its_certificate_and_is_cut_off_when_revoked(
        x509_fleet: X509Fleet, enrollment_token_factory: Any, operator_client: Any,
        tmp_path: Path) -> None:
    from fleet.devices.models import Device
    from fleet.telemetry.models import Event as StoredEvent

    token = enrollment_token_factory(max_uses=5)
    uid, other_uid = f"x509-{secrets.token_hex(3)}", f"x509-{secrets.token_hex(3)}"
    identity = enroll_device(x509_fleet, tmp_path / "dev", token, uid)
    other = enroll_device(x509_fleet, tmp_path / "other", token, other_uid)

    # The answer certified the device's own key; no password exists for it.
    assert identity.mqtt.credential == ""
    cert = x509.load_pem_x509_certificate(Path(identity.mqtt.cert_file or "").read_bytes())
    device = Device.objects.get(uid=uid)
    assert cert.subject.rfc4514_string() == f"CN={uid}"
    assert cert.public_key().public_bytes(  # type: ignore[union-attr]
        *_spki()) == _pem_spki(device.public_key_pem)
    assert Path(identity.mqtt.key_file or "") == (tmp_path / "dev" / "device.key").resolve()

    client = DeviceClient(identity, state_dir=tmp_path / "dev", capabilities=CAPS,
                          batch_events=5, durable=False)
    client.start()
    try:
        assert client.wait_connected(15), "the device's certificate was not accepted"
        for i in range(10):
            client.record(Event(1_717_000_000_000 + 1000 * i, i % 3, 200, 12))
        client.flush()
        assert client.wait_drained(10)
        deadline = time.monotonic() + 15
        while StoredEvent.objects.filter(device_id=device.id).count() < 10:
            assert time.monotonic() < deadline, "the worker did not store the device's events"
            time.sleep(0.1)
        assert StoredEvent.objects.filter(device_id=device.id).count() == 10

        # Its certificate opens its own topics only, whatever client id it asks for.
        raw, seen = raw_client(x509_fleet, other, client_id=uid)  # tries to take uid's id
        try:
            assert seen["ready"].wait(10) and seen["connack"] == [0]
            assert publish_ack(raw, seen, f"fleet/v1/{uid}/events") == NOT_AUTHORIZED
            assert publish_ack(raw, seen, f"fleet/v1/{uid}/status") == NOT_AUTHORIZED
            assert publish_ack(raw, seen, f"fleet/v1/{other_uid}/events") < 128
            assert client.connected, "another certificate took the device's session over"
        finally:
            raw.loop_stop()
            raw.disconnect()

        started = time.monotonic()
        assert operator_client.post(f"/api/v1/devices/{uid}/revoke/").status_code == 200
        while client.connected:
            assert time.monotonic() - started < 5, "the revoked device is still connected"
            time.sleep(0.01)
        time.sleep(2.5)  # the client retries with backoff: every handshake must fail
        assert not client.connected
        assert client.link.connects == 1
    finally:
        client.close()
    again, seen = raw_client(x509_fleet, identity, client_id=uid)
    try:
        assert not seen["ready"].wait(3), "a revoked certificate was accepted"
    finally:
        again.loop_stop()


@pytest.mark.parametrize("wrong", ["key", "name"])
def test_sdk_refuses_a_certificate_for_another_key_or_device(
        x509_fleet: X509Fleet, enrollment_token_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, wrong: str) -> None:
    """An answer whose certificate is not for this device's key and id is not kept: the
    device could not log in with it, or would log in as someone else."""
    from device_sdk.client import identity as identity_module

    token = enrollment_token_factory(max_uses=5)
    stranger = enroll_device(x509_fleet, tmp_path / "stranger", token, "x509-stranger")
    victim_key = identity_module.load_or_create_key(tmp_path / "victim")
    foreign = (Path(stranger.mqtt.cert_file or "").read_text() if wrong == "key"
               else x509_fleet.access.ca.issue(  # the victim's key, someone else's name
                   "x509-stranger", identity_module.public_key_pem(victim_key)).certificate_pem)
    real_request = identity_module._request_json

    def swap(url: str, body: Any, **kwargs: Any) -> dict[str, Any]:
        answer = real_request(url, body, **kwargs)
        if "mqtt" in answer:
            answer["mqtt"]["client_certificate"] = foreign
        return answer

    monkeypatch.setattr(identity_module, "_request_json", swap)
    with pytest.raises(EnrollmentError) as refused:
        enroll_device(x509_fleet, tmp_path / "victim", token, "x509-victim")
    assert refused.value.reason == "bad_answer"
    assert not (tmp_path / "victim" / "device.crt").exists()
    assert not DeviceIdentity.exists(tmp_path / "victim")


def _spki() -> tuple[Any, Any]:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo


def _pem_spki(pem: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_public_key(pem.encode()).public_bytes(*_spki())


