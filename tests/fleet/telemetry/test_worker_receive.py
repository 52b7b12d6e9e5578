"""The worker's MQTT client (fleet.intake.receive): every whole packet of a socket read handled
in one turn, plain PUBLISHes with their packet ids, others through paho, and bulk PUBACKs that
are byte for byte what paho sends one by one."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.intake.receive import WorkerClient
from tests.device_sdk.mqtt.test_link_receive import publish_packet


def worker_client(sock: socket.socket, client_class: type[mqtt.Client] = WorkerClient
                  ) -> mqtt.Client:
    client = client_class(CallbackAPIVersion.VERSION2, client_id="w", protocol=mqtt.MQTTv5,
                          manual_ack=True)
    sock.setblocking(False)
    client._sock = sock  # type: ignore[assignment]
    return client


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, broker = socket.socketpair()
    yield ours, broker
    ours.close()
    broker.close()


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(0.2)
    out = b""
    try:
        while chunk := sock.recv(65_536):
            out += chunk
    except TimeoutError:
        pass
    return out


def test_one_read_handles_every_packet_with_ids_and_no_automatic_ack(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    client = worker_client(ours)
    got: list[Any] = []
    client.on_plain_message = lambda c, *args: got.append(("plain", *args))
    client.on_message = lambda c, u, m: got.append(("paho", m.topic, m.payload, m.mid))
    payloads = [bytes([i]) * (50 + i) for i in range(200)]
    # One with a property (Message Expiry Interval): paho decodes it, on_message gets it.
    data = b"".join(publish_packet(f"fleet/v1/d{i}/events", p, qos=1, mid=i + 1)
                    for i, p in enumerate(payloads))
    data += publish_packet("fleet/v1/dx/events", b"x", qos=1, mid=999,
                           properties=b"\x02\x00\x00\x00\x3c")
    broker.sendall(data)
    assert client.loop_read() == 0
    assert got[:-1] == [("plain", f"fleet/v1/d{i}/events", p, i + 1, 1)
                        for i, p in enumerate(payloads)]
    assert got[-1] == ("paho", "fleet/v1/dx/events", b"x", 999)
    client.loop_write()
    assert read_all(broker) == b""  # manual ack: nothing acknowledged before the commit


def test_ack_many_sends_what_paho_sends_for_each(
        pair: tuple[socket.socket, socket.socket]) -> None:
    mids = [1, 2, 255, 256, 4097, 65_535]
    ours, broker = pair
    client = worker_client(ours)
    assert client.ack_many(iter(mids)) == 0
    client.loop_write()
    ours2, broker2 = socket.socketpair()
    try:
        paho = worker_client(ours2, mqtt.Client)
        for mid in mids:
            paho.ack(mid, 1)
        paho.loop_write()
        expected = read_all(broker2)
    finally:
        ours2.close()
        broker2.close()
    assert read_all(broker) == expected == b"".join(
        bytes([0x40, 2]) + mid.to_bytes(2, "big") for mid in mids)
    assert client.ack_many([]) == 0
    client.loop_write()
    assert read_all(broker) == b""
