"""The link's receive path: buffered reads, plain PUBLISH packets past paho's message objects,
everything else through paho as before, and the per-kind byte tally benches read."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk.mqtt.lean_client import LeanClient, WireTally
from device_sdk.protocol.ota_messages import Chunk, encode_fanout_chunk
from device_sdk.protocol.topics import package_topic


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, mid: int = 1,
                   properties: bytes = b"") -> bytes:
    """An MQTT 5 PUBLISH as a broker sends it."""
    name = topic.encode()
    body = (len(name).to_bytes(2, "big") + name + (mid.to_bytes(2, "big") if qos else b"")
            + bytes([len(properties)]) + properties + payload)
    length, size = bytearray(), len(body)
    while True:
        size, digit = divmod(size, 128)
        length.append(digit | (0x80 if size else 0))
        if not size:
            break
    return bytes([0x30 | qos << 1]) + bytes(length) + body


class FakeSocket:
    """Hands out what the broker "sent", at most ``record`` bytes per read, as TLS would."""

    def __init__(self, data: bytes, record: int = 16_384) -> None:
        self.data, self.record, self.reads = data, record, 0

    def recv(self, size: int) -> bytes:
        if not self.data:
            raise BlockingIOError
        self.reads += 1
        out, self.data = self.data[:min(size, self.record)], self.data[min(size, self.record):]
        return out

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        pass


def client_reading(data: bytes, tally: WireTally | None = None) -> tuple[LeanClient, list[Any]]:
    client = LeanClient(CallbackAPIVersion.VERSION2, client_id="d", protocol=mqtt.MQTTv5,
                         tally=tally)
    got: list[Any] = []
    client.on_plain_message = lambda c, topic, payload, mid, qos: got.append(
        ("plain", topic, payload))
    client.on_message = lambda c, u, m: got.append(("paho", m.topic, m.payload, m.properties))
    client._sock = FakeSocket(data)  # type: ignore[assignment]
    client._send_puback = lambda mid: got.append(("puback", mid)) or 0  # type: ignore[method-assign]
    return client, got


def test_one_socket_read_per_turn_serves_every_packet_it_brought() -> None:
    """A TLS record holds several fan-out chunks: one read serves them all, a packet split
    across reads is put together, and a turn makes one read (the device's fair share)."""
    chunks = [encode_fanout_chunk(Chunk(2, i * 2048, bytes([i]) * 2048)) for i in range(40)]
    data = b"".join(publish_packet(package_topic(2), c) for c in chunks)
    client, got = client_reading(data)
    sock: FakeSocket = client._sock  # type: ignore[assignment]
    client.read_available()
    assert sock.reads == 1 and 0 < len(got) < len(chunks)  # one record's worth
    turns = 1
    while sock.data:
        client.read_available()
        turns += 1
    assert turns == sock.reads == -(-len(data) // 16_384)
    assert got == [("plain", package_topic(2), c) for c in chunks]
    assert all(type(item[2]) is bytes for item in got)


def test_qos1_is_acknowledged_and_packets_with_properties_take_paho_s_path() -> None:
    offer = publish_packet("fleet/v1/d/ota/offer", b"\x84manifest", qos=1, mid=7)
    # Message Expiry Interval (0x02), four bytes: paho decodes it as it always did.
    expiring = publish_packet("fleet/v1/d/ota/offer", b"x", qos=1, mid=8,
                              properties=b"\x02\x00\x00\x00\x3c")
    client, got = client_reading(offer + expiring)
    client.read_available()
    assert got[:2] == [("plain", "fleet/v1/d/ota/offer", b"\x84manifest"), ("puback", 7)]
    assert got[2][:3] == ("paho", "fleet/v1/d/ota/offer", b"x")
    assert got[2][3].MessageExpiryInterval == 60
    assert got[3] == ("puback", 8)


def test_tally_counts_whole_packets_by_kind() -> None:
    fanout = publish_packet(package_topic(2), encode_fanout_chunk(Chunk(2, 0, b"z" * 100)))
    offer = publish_packet("fleet/v1/d/ota/offer", b"m" * 50, qos=1)
    tally = WireTally()
    client, _ = client_reading(fanout * 3 + offer, tally)
    client.read_available()
    seen = tally.snapshot()
    assert seen[("fanout_chunks", "down")] == (3, 3 * len(fanout))
    assert seen[("offers", "down")] == (1, len(offer))
    assert seen[("offers", "server")] == (1, len(offer))  # the worker's copy of the offer
