"""LeanClient joins queued packets that need no completion work into one send (one TLS
record, one system call), and leaves QoS 0 publishes and DISCONNECT to paho's own path."""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from device_sdk.mqtt.lean_client import LeanClient


@pytest.fixture
def client() -> Any:
    """A client on one end of a socket pair, as if connected; the test reads the other."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    c = LeanClient(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1", protocol=mqtt.MQTTv5)
    c._sock = ours
    c._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    sends: list[bytes] = []
    real = c._sock_send

    def counting(buf: bytes) -> int:
        sends.append(bytes(buf))
        return real(buf)

    c._sock_send = counting  # type: ignore[method-assign]
    yield c, theirs, sends
    ours.close()
    theirs.close()


def queue_in_callback(c: LeanClient, *queue: tuple[int, bytes, int]) -> None:
    """Queue packets as a callback does (paho defers the write until the callback ends)."""
    with c._in_callback_mutex:
        for command, packet, qos in queue:
            c._packet_queue(command, packet, 0, qos)


def test_acks_and_qos1_publishes_of_one_callback_go_out_in_one_send(client: Any) -> None:
    c, theirs, sends = client
    puback = bytes([0x40, 2, 0, 7])
    publish = bytes([0x32, 8, 0, 3]) + b"a/b" + bytes([0, 9, 0]) + b"x"
    queue_in_callback(c, (0x40, puback, 0), (0x40, puback, 0), (0x32, publish, 1))
    assert c.loop_write() == mqtt.MQTT_ERR_SUCCESS
    assert sends == [puback + puback + publish]
    assert theirs.recv(100) == puback + puback + publish
    assert not c._out_packet


def test_a_qos0_publish_is_sent_alone_and_its_on_publish_fires(client: Any) -> None:
    c, theirs, sends = client
    published: list[int] = []
    c.on_publish = lambda _c, _userdata, mid, *_: published.append(mid)
    puback = bytes([0x40, 2, 0, 7])
    qos0 = bytes([0x30, 6, 0, 3]) + b"a/b" + b"x"
    info = mqtt.MQTTMessageInfo(5)
    with c._in_callback_mutex:
        c._packet_queue(0x40, puback, 0, 0)
        c._packet_queue(0x40, puback, 0, 0)
        c._packet_queue(0x30, qos0, 5, 0, info)
        c._packet_queue(0x40, puback, 0, 0)
    c.loop_write()
    assert sends == [puback + puback, qos0, puback]
    assert published == [5] and info.is_published()
    assert theirs.recv(100) == puback + puback + qos0 + puback


def test_the_join_stays_within_one_tls_record(client: Any) -> None:
    c, theirs, sends = client
    body = b"y" * 6000
    publish = bytes([0x32, 0xF9, 0x2E, 0, 1]) + b"t" + bytes([0, 1, 0]) + body  # 6009-byte body
    queue_in_callback(c, *[(0x32, publish, 1)] * 4)
    c.loop_write()
    assert [len(s) for s in sends] == [2 * len(publish), 2 * len(publish)]
    got = b""
    while len(got) < 4 * len(publish):
        got += theirs.recv(65536)
    assert got == publish * 4
