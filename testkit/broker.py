"""Integration fixtures: a real Mosquitto with dynamic security on free loopback ports, one
with certificate-only device access (:func:`running_x509_broker`), and MQTT probes. Loaded for the
whole suite by tests/conftest.py."""

from __future__ import annotations

import os
import queue
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.mqtt import BrokerEndpoint, connect, new_client
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import DYNSEC_PLUGIN, BrokerError, MosquittoInstance, find_executable
from fleet.broker.x509 import X509Access, write_broker_template

TIMEOUT = 5.0


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_mosquitto() -> None:
    """Skip when Mosquitto is missing on a developer machine; fail in CI."""
    try:
        find_executable("mosquitto")
        find_executable("mosquitto_ctrl")
        if not Path(DYNSEC_PLUGIN).exists():
            raise BrokerError(f"dynamic security plugin missing: {DYNSEC_PLUGIN}")
    except BrokerError as exc:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"Mosquitto is required in CI: {exc}")
        pytest.skip(f"Mosquitto not installed: {exc}")


def make_broker(workdir: Path) -> MosquittoInstance:
    """Return a broker (not yet started) on free loopback ports with a random admin password."""
    require_mosquitto()
    return MosquittoInstance(workdir, free_port(), free_port(), secrets.token_urlsafe(16))


@dataclass
class X509Broker:
    """A running Mosquitto with certificate-only device access (the X.509 backend)."""

    instance: MosquittoInstance
    access: X509Access  # the backend, its admin client ensured on the broker
    device_port: int  # the listener that takes device certificates of ``access.ca``
    pki: Path


@contextmanager
def running_x509_broker(workdir: Path, pki: Path) -> Iterator[X509Broker]:
    """Run a Mosquitto in ``workdir`` whose device listener (a free port) takes certificates
    of the device CA in ``pki`` (made there unless it exists), for a ``with`` block; stopped on
    the way out. Skips (fails in CI) without Mosquitto. The broker's user must be able to read
    ``pki`` (callers running as root open their folder: ``chmod 0o755``)."""
    require_mosquitto()
    device_port = free_port()
    instance = MosquittoInstance(workdir, free_port(), free_port(), secrets.token_urlsafe(16),
                                 template=write_broker_template(pki, device_port))
    access = X509Access(pki, admin=(instance.host, instance.port, instance.admin_username,
                                    instance.admin_password), pid_file=instance.pid_file,
                        device_listener=(instance.host, device_port))
    access.ensure_admin()
    instance.start()
    try:
        yield X509Broker(instance, access, device_port, pki)
    finally:
        instance.stop()


@pytest.fixture
def unused_port() -> int:
    """Return a loopback port nobody listens on."""
    return free_port()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[MosquittoInstance]:
    """Return a private broker (not started) for tests that stop or restart it."""
    instance = make_broker(tmp_path / "broker")
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoInstance]:
    """Run one Mosquitto for the session; stop it at the end."""
    instance = make_broker(tmp_path_factory.mktemp("broker"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def broker_access(broker: MosquittoInstance) -> Iterator[DynsecAccess]:
    """Return the dynamic security admin of the session broker."""
    access = DynsecAccess(broker.host, broker.port, broker.admin_username, broker.admin_password)
    try:
        yield access
    finally:
        access.close()


class Probe:
    """A synchronous MQTT 5 test client: every call waits for the broker's answer."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        client_id: str,
        ca_certs: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        # TLS exactly when a CA is given; it must then check the broker's certificate.
        self.endpoint = BrokerEndpoint(host, port, tls=ca_certs is not None)
        self.client = new_client(
            self.endpoint, client_id=client_id, username=username, password=password,
            ca_certs=ca_certs, reconnect_on_failure=False,
        )
        self.connack: ReasonCode | None = None
        self.disconnect_reason: ReasonCode | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._acks: dict[int, Any] = {}
        self._ack_events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = lambda c, u, mid, rc, p: self._ack(mid, rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ack(mid, rcs[0])
        self.client.on_message = lambda c, u, message: self.messages.put(message)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, properties: Any
    ) -> None:
        self.connack = rc
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, properties: Any
    ) -> None:
        self.disconnect_reason = rc
        self.disconnected.set()

    def _event(self, mid: int) -> threading.Event:
        with self._lock:
            return self._ack_events.setdefault(mid, threading.Event())

    def _ack(self, mid: int, rc: Any) -> None:
        self._acks[mid] = rc
        self._event(mid).set()

    def connect(self) -> ReasonCode:
        """Connect and return the CONNACK reason code."""
        connect(self.client, self.endpoint, keepalive=30)
        assert self.connected.wait(TIMEOUT) or self.disconnected.wait(0.1), "no CONNACK"
        if self.connack is None:
            raise AssertionError(f"connection closed before CONNACK: {self.disconnect_reason}")
        return self.connack

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if not self._event(info.mid).wait(TIMEOUT):
            raise AssertionError(f"no PUBACK for {topic} (disconnect: {self.disconnect_reason})")
        return self._acks[info.mid]

    def subscribe(self, topic: str) -> ReasonCode:
        """Subscribe at QoS 1 and return the SUBACK reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None and self._event(mid).wait(TIMEOUT), f"no SUBACK for {topic}"
        return self._acks[mid]

    def receive(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage | None:
        """Return the next delivered message, or None after ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


ProbeFactory = Callable[..., Probe]


@pytest.fixture
def probe(broker: MosquittoInstance) -> Iterator[ProbeFactory]:
    """Return a factory of probes on the session broker; every probe is closed afterwards."""
    made: list[Probe] = []

    def make(
        username: str | None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        tls: bool = False,
        ca_certs: str | None = None,
    ) -> Probe:
        port = broker.tls_port if tls else broker.port
        if tls and ca_certs is None:
            ca_certs = str(broker.ca_cert)
        made.append(
            Probe(
                broker.host,
                port,
                username,
                password,
                client_id or username or f"anon-{secrets.token_hex(3)}",
                ca_certs,
            )
        )
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Return a maker of device ids unique to this test, so tests share a broker safely."""
    suffix = secrets.token_hex(3)
    return lambda name: f"{name}-{suffix}"
