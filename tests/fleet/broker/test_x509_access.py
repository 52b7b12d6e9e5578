"""Per-device X.509 broker access (fleet/broker/x509.py) against a real Mosquitto 2.

What a device may do comes from one set of ACL patterns, who it is from its certificate
(CN = uid = username = client id); revocation puts it on the CRL, reloads the broker and cuts
its live connection, and its reconnection fails the TLS handshake.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleet.broker.access import BrokerAccess, ServiceRole, device_grants
from fleet.broker.x509 import (
    DeviceCA,
    X509Access,
    device_patterns,
    merge_grants,
)
from testkit.broker import X509Broker, running_x509_broker

NOT_AUTHORIZED = 135
TIMEOUT = 5.0


def test_patterns_grant_exactly_device_grants() -> None:
    """The %u patterns, expanded for a uid, are that uid's device_grants, nothing more."""
    expanded = {line.split(" ", 2)[2].replace("%u", "d1"): line.split(" ", 2)[1]
                for line in device_patterns()}
    assert expanded == merge_grants(device_grants("d1"))


def _public_pem(key: Any) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("ca_key", ["ed25519", "p256"])
def test_issuance_and_revocation_survive_a_new_process(tmp_path: Path, ca_key: str) -> None:
    ca = DeviceCA(tmp_path).ensure(ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue("dev-1", _public_pem(key))
    cert = cx509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert cert.subject.rfc4514_string() == "CN=dev-1"
    assert cert.public_key() == key.public_key()
    assert issued.ca_pem == ca.cert_path.read_text()
    assert ca.revoke("dev-1") == [cert.serial_number]
    assert ca.revoke("dev-1") == []  # idempotent
    again = DeviceCA(tmp_path).ensure()
    crl = cx509.load_pem_x509_crl(again.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.is_signature_valid(again._cert.public_key())  # type: ignore[union-attr,arg-type]
    assert cert.verify_directly_issued_by(again._cert) is None  # type: ignore[func-returns-value,arg-type]


def test_issuing_writes_nothing_and_any_process_finds_the_serial(tmp_path: Path) -> None:
    """A certificate is a function of (uid, key, CA): issuing writes no record, another
    process (another web host with the CA key) issues the same one, and revocation finds its
    serial from the uid alone."""
    ca = DeviceCA(tmp_path).ensure()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    key = ed25519.Ed25519PrivateKey.generate()
    first = ca.issue("dev-2", _public_pem(key)).certificate_pem
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert DeviceCA(tmp_path).ensure().issue("dev-2", _public_pem(key)).certificate_pem == first
    serial = cx509.load_pem_x509_certificate(first.encode()).serial_number
    other = cx509.load_pem_x509_certificate(ca.issue("dev-3", _public_pem(key)).certificate_pem
                                            .encode()).serial_number
    assert serial != other
    assert DeviceCA(tmp_path).ensure().revoke("dev-2") == [serial]


def test_serials_are_secret_to_whoever_lacks_the_ca_key(tmp_path: Path) -> None:
    """Two CAs give the same uid unrelated serials: the serial is keyed by the CA key."""
    one, two = DeviceCA(tmp_path / "a").ensure(), DeviceCA(tmp_path / "b").ensure()
    assert one.serial_for("dev-1") != two.serial_for("dev-1")
    assert 0 < one.serial_for("dev-1") < 2 ** 120


def test_serials_recorded_by_older_releases_are_revoked_too(tmp_path: Path) -> None:
    ca = DeviceCA(tmp_path).ensure()
    legacy = ca._legacy_file("dev-old")
    legacy.parent.mkdir(parents=True)
    legacy.write_text("abc123\n")
    assert sorted(ca.revoke("dev-old")) == sorted([ca.serial_for("dev-old"), 0xabc123])


@pytest.fixture(scope="module")
def x509_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[X509Broker]:
    work = tmp_path_factory.mktemp("x509-broker")
    with running_x509_broker(work, work / "pki") as broker:
        yield broker


@dataclass
class Client:
    """A paho MQTT 5 client that records what happens to it."""

    client: mqtt.Client
    connects: list[Any] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    acks: dict[int, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def publish(self, topic: str) -> int:
        info = self.client.publish(topic, b"x", qos=1)
        deadline = time.monotonic() + TIMEOUT
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def connect(broker: X509Broker, *, uid: str | None = None, files: tuple[Path, Path] | None = None,
            client_id: str | None = None, password: str | None = None,
            reconnect: bool = True) -> Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or uid or "",
                    protocol=mqtt.MQTTv5)
    rec = Client(c)
    c.on_connect = lambda cl, u, f, rc, p: (rec.connects.append(rc), rc.value == 0 and rec.ready.set())
    c.on_disconnect = lambda cl, u, f, rc, p: rec.disconnects.append(time.monotonic())
    c.on_publish = lambda cl, u, mid, rc, p: rec.acks.__setitem__(mid, rc.value)
    c.on_message = lambda cl, u, m: rec.messages.append(m.topic)
    c.reconnect_delay_set(0.2, 1)
    if files is not None:
        c.tls_set(ca_certs=str(broker.instance.ca_cert), certfile=str(files[0]),
                  keyfile=str(files[1]))
        c.connect(broker.instance.host, broker.device_port)
    else:
        c.username_pw_set(uid, password)
        c.connect(broker.instance.host, broker.instance.port)
    if reconnect:
        c.loop_start()
    assert rec.ready.wait(TIMEOUT), rec.connects
    return rec


def enroll(broker: X509Broker, uid: str, algorithm: str = "ed25519") -> tuple[Path, Path]:
    """Make a device key, have the backend certify it; return (cert, key) files."""
    key = (ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519"
           else ec.generate_private_key(ec.SECP256R1()))
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    broker.access.provision_device(uid, "unused")
    cert = broker.pki / f"{uid}.crt"
    cert.write_text(broker.access.issue_device_certificate(uid, pem).certificate_pem)
    key_path = broker.pki / f"{uid}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_path



@pytest.mark.integration
def test_backend_implements_broker_access(x509_broker: X509Broker) -> None:
    assert isinstance(x509_broker.access, BrokerAccess)
    assert x509_broker.access.ping() < TIMEOUT


@pytest.mark.integration
@pytest.mark.parametrize("algorithm", ["ed25519", "p256"])
def test_device_uses_its_own_topics_only(x509_broker: X509Broker, algorithm: str) -> None:
    uid = f"dev-{algorithm}-{secrets.token_hex(3)}"
    device = connect(x509_broker, uid=uid, files=enroll(x509_broker, uid, algorithm))
    try:
        assert device.publish(f"fleet/v1/{uid}/events") < 128
        assert device.publish(f"fleet/v1/{uid}/ota/report") < 128
        assert device.publish("fleet/v1/someone-else/events") == NOT_AUTHORIZED
        assert device.publish(f"fleet/v1/{uid}/ota/offer") == NOT_AUTHORIZED  # server's leaf
        assert device.publish("fleet/v1/pkg/1/c") == NOT_AUTHORIZED  # read-only fan-out
    finally:
        device.close()


@pytest.mark.integration
def test_a_device_cannot_take_another_ones_client_id(x509_broker: X509Broker) -> None:
    victim_uid, other_uid = f"victim-{secrets.token_hex(3)}", f"other-{secrets.token_hex(3)}"
    victim = connect(x509_broker, uid=victim_uid, files=enroll(x509_broker, victim_uid))
    other = connect(x509_broker, uid=other_uid, files=enroll(x509_broker, other_uid),
                    client_id=victim_uid)  # the broker uses the certificate's CN instead
    try:
        time.sleep(0.5)
        assert victim.disconnects == []
        assert victim.publish(f"fleet/v1/{victim_uid}/events") < 128
        assert other.publish(f"fleet/v1/{other_uid}/events") < 128
    finally:
        victim.close()
        other.close()


@pytest.mark.integration
def test_worker_reads_every_device_and_cannot_forge_one(x509_broker: X509Broker) -> None:
    password = secrets.token_urlsafe(12)
    x509_broker.access.provision_service("x509-worker", password, ServiceRole.WORKER)
    worker = connect(x509_broker, uid="x509-worker", password=password,
                     client_id=f"w-{secrets.token_hex(3)}")
    uid = f"dev-{secrets.token_hex(3)}"
    device = connect(x509_broker, uid=uid, files=enroll(x509_broker, uid))
    try:
        worker.client.subscribe("$share/g/fleet/v1/+/events", qos=1)
        time.sleep(0.3)
        assert device.publish(f"fleet/v1/{uid}/events") == 0
        deadline = time.monotonic() + TIMEOUT
        while f"fleet/v1/{uid}/events" not in worker.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        assert f"fleet/v1/{uid}/events" in worker.messages
        assert worker.publish(f"fleet/v1/{uid}/events") == NOT_AUTHORIZED
        assert worker.publish(f"fleet/v1/{uid}/ota/offer") < 128
    finally:
        worker.close()
        device.close()


@pytest.mark.integration
def test_gateway_speaks_for_its_children_only(x509_broker: X509Broker) -> None:
    gw, child, stranger = (f"{n}-{secrets.token_hex(3)}" for n in ("gw", "child", "stranger"))
    files = enroll(x509_broker, gw)
    x509_broker.access.provision_gateway(gw, "unused", [])
    x509_broker.access.add_gateway_children(gw, [child])
    time.sleep(0.3)
    gateway = connect(x509_broker, uid=gw, files=files)
    try:
        assert gateway.publish(f"fleet/v1/{child}/events") < 128
        assert gateway.publish(f"fleet/v1/{gw}/status") < 128
        assert gateway.publish(f"fleet/v1/{stranger}/events") == NOT_AUTHORIZED
    finally:
        gateway.close()


@pytest.mark.integration
def test_gateway_logs_in_with_its_password_over_tls_until_revoked(x509_broker: X509Broker) -> None:
    """A serial gateway has no device certificate: its provisioned password opens the TLS
    listener that takes passwords (the device listener takes certificates only), with its
    children's topics; revoking it cuts it and its password stops working."""
    gw, child = f"gwp-{secrets.token_hex(3)}", f"kid-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    x509_broker.access.provision_gateway(gw, password, [child])
    gateway = connect_password_tls(x509_broker, gw, password)
    try:
        assert gateway.publish(f"fleet/v1/{child}/events") < 128
        assert gateway.publish(f"fleet/v1/{gw}/status") < 128
        assert gateway.publish("fleet/v1/someone-else/events") == NOT_AUTHORIZED
        with pytest.raises(AssertionError):  # a wrong password is refused
            connect_password_tls(x509_broker, gw, "wrong", reconnect=False)
        started = time.monotonic()
        x509_broker.access.revoke_device(gw)
        while not gateway.disconnects and time.monotonic() - started < TIMEOUT:
            time.sleep(0.01)
        assert gateway.disconnects and gateway.disconnects[0] - started < 5.0
        with pytest.raises(AssertionError):
            connect_password_tls(x509_broker, gw, password, reconnect=False)
    finally:
        gateway.close()


def connect_password_tls(broker: X509Broker, username: str, password: str,
                         reconnect: bool = True, client_id: str | None = None) -> Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or username,
                    protocol=mqtt.MQTTv5)
    rec = Client(c)
    c.on_connect = lambda cl, u, f, rc, p: (rec.connects.append(rc), rc.value == 0 and rec.ready.set())
    c.on_disconnect = lambda cl, u, f, rc, p: rec.disconnects.append(time.monotonic())
    c.on_publish = lambda cl, u, mid, rc, p: rec.acks.__setitem__(mid, rc.value)
    c.username_pw_set(username, password)
    c.tls_set(ca_certs=str(broker.instance.ca_cert))
    c.reconnect_delay_set(0.2, 1)
    c.connect(broker.instance.host, broker.instance.tls_port)
    c.loop_start()
    if not rec.ready.wait(TIMEOUT if reconnect else 2.0):
        c.loop_stop()
        raise AssertionError(rec.connects)
    return rec


@pytest.mark.integration
def test_a_gateway_cannot_take_a_devices_client_id(x509_broker: X509Broker) -> None:
    """The gateways' password listener makes the username the client id too: a gateway that
    asks for a device's uid as its client id neither drops the device nor takes its session."""
    gw, victim_uid = f"gwc-{secrets.token_hex(3)}", f"victim-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    x509_broker.access.provision_gateway(gw, password, [])
    victim = connect(x509_broker, uid=victim_uid, files=enroll(x509_broker, victim_uid))
    gateway = connect_password_tls(x509_broker, gw, password, client_id=victim_uid)
    try:
        time.sleep(0.5)
        assert victim.disconnects == []
        assert victim.publish(f"fleet/v1/{victim_uid}/events") < 128
        assert gateway.publish(f"fleet/v1/{gw}/status") < 128  # it runs as itself
    finally:
        victim.close()
        gateway.close()


@pytest.mark.integration
def test_revocation_cuts_the_live_connection_and_refuses_the_certificate(
        x509_broker: X509Broker) -> None:
    uid, bystander_uid = f"rev-{secrets.token_hex(3)}", f"stay-{secrets.token_hex(3)}"
    files = enroll(x509_broker, uid)
    device = connect(x509_broker, uid=uid, files=files)
    bystander = connect(x509_broker, uid=bystander_uid, files=enroll(x509_broker, bystander_uid))
    try:
        started = time.monotonic()
        x509_broker.access.revoke_device(uid)
        deadline = started + TIMEOUT
        while not device.disconnects and time.monotonic() < deadline:
            time.sleep(0.01)
        assert device.disconnects, "a revoked device stays connected"
        assert device.disconnects[0] - started < 5.0
        time.sleep(1.5)  # paho keeps trying to reconnect: the handshake fails every time
        assert all(getattr(rc, "value", rc) == 0 for rc in device.connects[:1])
        assert len(device.connects) == 1, device.connects
        with pytest.raises(Exception):  # noqa: B017  # ssl.SSLError or a reset, by timing
            connect(x509_broker, uid=uid, files=files, reconnect=False)
        assert bystander.disconnects == []
        assert bystander.publish(f"fleet/v1/{bystander_uid}/events") < 128
    finally:
        device.close()
        bystander.close()


@pytest.mark.integration
def test_a_retried_revocation_reloads_even_if_the_crl_was_written(x509_broker: X509Broker) -> None:
    """The first attempt writes the CRL and then cannot reach the broker (the reload fails);
    the retry finds nothing new to revoke, yet must reload and lock the device out."""
    from fleet.broker.access import BrokerUnavailable
    from fleet.broker.x509 import _pid_reloader

    uid = f"retry-{secrets.token_hex(3)}"
    files = enroll(x509_broker, uid)
    device = connect(x509_broker, uid=uid, files=files)
    real = _pid_reloader(x509_broker.instance.pid_file)
    failures = [BrokerUnavailable("the pid file is unreachable")]

    def flaky_reload() -> None:
        if failures:
            raise failures.pop()
        real()

    access = X509Access(x509_broker.pki, admin=x509_broker.access.admin, reload=flaky_reload,
                        device_listener=(x509_broker.instance.host, x509_broker.device_port))
    try:
        with pytest.raises(BrokerUnavailable):
            access.revoke_device(uid)
        started = time.monotonic()
        access.revoke_device(uid)
        while not device.disconnects and time.monotonic() - started < TIMEOUT:
            time.sleep(0.01)
        assert device.disconnects and device.disconnects[0] - started < 5.0
        time.sleep(1.5)  # paho keeps reconnecting: every handshake must fail
        assert len(device.connects) == 1, device.connects
        with pytest.raises(Exception):  # noqa: B017  # ssl.SSLError or a reset, by timing
            connect(x509_broker, uid=uid, files=files, reconnect=False)
    finally:
        device.close()


@pytest.mark.integration
def test_a_revocation_the_broker_never_loads_is_an_error(x509_broker: X509Broker) -> None:
    """A reload that does not reach the broker (a stale pid file) is reported, not assumed."""
    from fleet.broker.access import BrokerUnavailable

    access = X509Access(x509_broker.pki, admin=x509_broker.access.admin,
                        reload=lambda: None, crl_timeout_s=1.0,
                        device_listener=(x509_broker.instance.host, x509_broker.device_port))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="did not refuse"):
        access.revoke_device(f"lost-{secrets.token_hex(3)}")
    assert time.monotonic() - started < 3.0


def test_probes_do_not_grow_the_crl(tmp_path: Path) -> None:
    """Each revocation's probe goes on the CRL with it; only the newest probes stay."""
    from fleet.broker.device_ca import PROBES_KEPT

    ca = DeviceCA(tmp_path).ensure()
    for i in range(PROBES_KEPT + 5):
        ca.revoke(f"dev-{i}", probe=f"crl-probe-{i}")
    crl = cx509.load_pem_x509_crl(ca.crl_path.read_bytes())
    serials = {entry.serial_number for entry in crl}
    assert {ca.serial_for(f"dev-{i}") for i in range(PROBES_KEPT + 5)} <= serials
    assert len(serials) == 2 * PROBES_KEPT + 5
    assert ca.serial_for(f"crl-probe-{PROBES_KEPT + 4}") in serials
    assert ca.serial_for("crl-probe-0") not in serials


def test_settings_select_the_x509_backend(tmp_path: Path) -> None:
    from django.test import override_settings

    from fleet.broker.configured import broker_access, reset_broker_access

    reset_broker_access()
    try:
        with override_settings(BROKER_ACCESS="x509", BROKER_X509_DIR=tmp_path / "pki",
                               BROKER_PID_FILE=tmp_path / "mosquitto.pid",
                               MQTT_URL="mqtt://127.0.0.1:1", MQTT_ADMIN_PASSWORD="pw"):
            access = broker_access()
            assert isinstance(access, X509Access)
            assert (tmp_path / "pki" / "device-ca.pem").exists()
            assert "pattern write fleet/v1/%u/events" in (tmp_path / "pki" / "acl").read_text()
    finally:
        reset_broker_access()
