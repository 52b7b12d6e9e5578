"""BrokerEndpoint.parse, new_client and connect: the one broker URL parser and paho set-up."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from device_sdk.mqtt import BrokerEndpoint, Will, connect, new_client


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://broker:1884", BrokerEndpoint("broker", 1884, False)),
    ("mqtt://broker", BrokerEndpoint("broker", 1883, False)),
    ("mqtts://broker", BrokerEndpoint("broker", 8883, True)),
    ("mqtts://broker:9999", BrokerEndpoint("broker", 9999, True)),
    ("tcp://10.0.0.1:1883", BrokerEndpoint("10.0.0.1", 1883, False)),
    ("ssl://10.0.0.1", BrokerEndpoint("10.0.0.1", 8883, True)),
    ("MQTTS://Broker.Example/", BrokerEndpoint("broker.example", 8883, True)),
    ("mqtt://[::1]:1883", BrokerEndpoint("::1", 1883, False)),
    ("  mqtt://127.0.0.1:1883 ", BrokerEndpoint("127.0.0.1", 1883, False)),
])
def test_parse_accepts_the_url_forms(url: str, expected: BrokerEndpoint) -> None:
    """Plain and TLS schemes, default ports, IPv6 brackets, a trailing slash."""
    assert BrokerEndpoint.parse(url) == expected


@pytest.mark.parametrize(("url", "says"), [
    ("", "empty"),
    ("localhost:1883", "must start with mqtt://"),
    ("http://broker", "must start with mqtt://"),
    ("broker", "must start with mqtt://"),
    ("mqtt://", "no host"),
    ("mqtt://:1883", "no host"),
    ("mqtt://broker:port", "bad port"),
    ("mqtt://broker:0", "bad port"),
    ("mqtt://broker:65536", "bad port"),
    ("mqtt://broker/fleet", "only scheme://host:port"),
    ("mqtt://broker:1883?x=1", "only scheme://host:port"),
])
def test_parse_refuses_bad_urls_naming_them(url: str, says: str) -> None:
    """A bad URL raises ValueError saying what is wrong and quoting the URL."""
    with pytest.raises(ValueError, match=says) as err:
        BrokerEndpoint.parse(url)
    assert repr(url.strip()) in str(err.value) or url == ""


def test_parse_refuses_credentials_without_echoing_them() -> None:
    """Credentials in the URL are refused, and the password does not reach the message."""
    with pytest.raises(ValueError, match="credentials") as err:
        BrokerEndpoint.parse("mqtt://user:s3cret@broker:1883")
    assert "s3cret" not in str(err.value)


def test_url_round_trips() -> None:
    """The canonical URL parses back to the same endpoint."""
    for endpoint in (BrokerEndpoint("h", 1883, False), BrokerEndpoint("::1", 8883, True)):
        assert BrokerEndpoint.parse(endpoint.url) == endpoint


def test_new_client_plain_has_no_tls() -> None:
    """A plain endpoint gets no TLS context even if a CA file is named."""
    client = new_client(BrokerEndpoint("h", 1883, False), client_id="c", username="u",
                        password="p", ca_certs="/nonexistent/ca.pem")
    assert client._ssl is False
    assert client._protocol == mqtt.MQTTv5
    assert client._username == b"u" and client._password == b"p"


def test_new_client_tls_uses_the_given_context() -> None:
    """TLS with a ready context uses exactly that context."""
    context = ssl.create_default_context()
    client = new_client(BrokerEndpoint("h", 8883, True), client_id="c", ssl_context=context)
    assert client._ssl is True and client._ssl_context is context


def test_new_client_tls_system_store_checks_names() -> None:
    """TLS without a CA trusts the system store, requires a certificate and checks names."""
    client = new_client(BrokerEndpoint("h", 8883, True), client_id="c")
    assert client._ssl_context is not None
    assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert client._ssl_context.check_hostname


def test_new_client_tls_missing_ca_file_fails_early() -> None:
    """A CA file that does not exist fails when the client is built, not at connect."""
    with pytest.raises((FileNotFoundError, OSError)):
        new_client(BrokerEndpoint("h", 8883, True), client_id="c", ca_certs="/nonexistent/ca.pem")


def test_new_client_refuses_two_cas() -> None:
    """At most one of ca_certs, ca_pem and ssl_context."""
    with pytest.raises(ValueError, match="at most one"):
        new_client(BrokerEndpoint("h", 8883, True), client_id="c", ca_certs="a.pem",
                   ca_pem="-----BEGIN CERTIFICATE-----")


def test_new_client_options() -> None:
    """manual_ack, in-flight and queue limits, reconnect delays and the will are applied."""
    client = new_client(BrokerEndpoint("h", 1883, False), client_id="w", manual_ack=True,
                        max_inflight=1000, max_queued=0, reconnect_delay=(0.2, 10),
                        reconnect_on_failure=False, will=Will("t/offline", b"\x00"))
    assert client._manual_ack is True
    assert client._max_inflight_messages == 1000
    assert client._reconnect_min_delay == 0.2 and client._reconnect_max_delay == 10
    assert client._reconnect_on_failure is False
    assert client._will_topic == b"t/offline" and client._will_qos == 1 and client._will_retain


class _FakeBroker:
    """Accept one MQTT connection, record the CONNECT packet, answer with a CONNACK."""

    def __init__(self, reason: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connect_packet = b""
        self.reason = reason
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            self.connect_packet = conn.recv(4096)
            conn.sendall(bytes([0x20, 3, 0, self.reason, 0]))  # CONNACK, no properties
            conn.recv(4096)  # until the client goes

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_broker() -> Iterator[_FakeBroker]:
    broker = _FakeBroker()
    yield broker
    broker.close()


def test_connect_sends_session_properties_and_waits(fake_broker: _FakeBroker) -> None:
    """clean_start=False, session expiry and receive maximum reach the CONNECT; wait_s returns
    the CONNACK and the caller's own on_connect still runs."""
    endpoint = BrokerEndpoint("127.0.0.1", fake_broker.port, False)
    client = new_client(endpoint, client_id="worker-1", username="u", password="p")
    seen: list[Any] = []
    client.on_connect = lambda *args: seen.append(args[3])
    try:
        reason = connect(client, endpoint, keepalive=30, clean_start=False,
                         session_expiry_s=86_400, receive_maximum=300, wait_s=5)
        assert reason is not None and not reason.is_failure
        assert seen == [reason]
        packet = fake_broker.connect_packet
        assert packet[0] == 0x10 and b"MQTT\x05" in packet
        flags = packet[packet.index(b"MQTT\x05") + 5]
        assert not flags & 0x02  # clean start off
        assert b"\x11\x00\x01\x51\x80" in packet  # Session Expiry Interval 86400
        assert b"\x21\x01\x2c" in packet  # Receive Maximum 300
        assert b"worker-1" in packet
    finally:
        client.disconnect()
        client.loop_stop()


def test_connect_unreachable_raises_unless_background() -> None:
    """A broker that is not there raises OSError at once; background=True defers to paho."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    endpoint = BrokerEndpoint("127.0.0.1", port, False)
    with pytest.raises(OSError):
        connect(new_client(endpoint, client_id="c"), endpoint)
    client = new_client(endpoint, client_id="c", reconnect_on_failure=False)
    try:
        assert connect(client, endpoint, background=True, wait_s=0.3) is None
    finally:
        client.loop_stop()
