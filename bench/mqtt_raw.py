"""Simulated devices on plain sockets: MQTT 5 framing, CONNECT, QoS 1 PUBLISH and PUBACKs.

Shared by the publishers of ``bench/ingest.py`` and ``bench/soak.py``. Each device has its own
connection and credentials (client id = username = uid) and sends what a device's client
sends, at a few µs of CPU per message instead of paho's ~75, because the simulated devices
share the machine with what is measured.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from device_sdk.mqtt.wire import mqtt_str, packet

PUBACK = 4  # packet type (first byte >> 4)


def mqtt_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take the complete MQTT packets off the front of ``buffer``: (first byte, body)."""
    packets = []
    while len(buffer) >= 2:
        length, shift, pos = 0, 0, 1
        while pos < len(buffer):
            byte = buffer[pos]
            length |= (byte & 0x7F) << shift
            shift, pos = shift + 7, pos + 1
            if byte < 0x80:
                break
        else:
            break  # the length itself is not complete yet
        if len(buffer) < pos + length:
            break
        packets.append((buffer[0], bytes(buffer[pos:pos + length])))
        del buffer[:pos + length]
    return packets


def publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH of ``payload`` on an encoded ``topic`` (no properties)."""
    return packet(0x32, topic + packet_id.to_bytes(2, "big") + b"\x00" + payload)


@dataclass(eq=False)  # one object per connection: hashed by identity
class RawDevice:
    """One connected device: its socket, encoded events topic, and what it has in flight."""

    uid: str
    sock: socket.socket
    topic: bytes
    inflight: int = 0
    packet_id: int = 0
    buffer: bytearray = field(default_factory=bytearray)

    def next_publish(self, payload: bytes) -> bytes:
        """Frame the next QoS 1 event batch (packet ids cycle through 1..65535)."""
        self.packet_id = self.packet_id % 65_535 + 1
        self.inflight += 1
        return publish_packet(self.topic, self.packet_id, payload)

    def read_pubacks(self) -> tuple[int, int]:
        """Read what the socket has; return (PUBACKs, refusals among them: reason >= 0x80)."""
        chunk = self.sock.recv(65_536)
        if not chunk:
            raise RuntimeError(f"broker closed the connection of {self.uid}")
        self.buffer += chunk
        acked = refused = 0
        for first, body in mqtt_packets(self.buffer):
            if first >> 4 != PUBACK:
                raise RuntimeError(f"unexpected packet {first:#x} from the broker")
            acked += 1
            refused += len(body) > 2 and body[2] >= 0x80
        self.inflight -= acked
        return acked, refused

    def close(self) -> None:
        """Send DISCONNECT (normal) and close."""
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()


def connect_device(host: str, port: int, uid: str, password: str) -> RawDevice:
    """Connect as a device (MQTT 5, clean start, keepalive 60 s); raise if refused."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    variable = mqtt_str("MQTT") + bytes([5, 0xC2]) + (60).to_bytes(2, "big") + b"\x00"
    sock.sendall(packet(0x10, variable + mqtt_str(uid) + mqtt_str(uid) + mqtt_str(password)))
    buffer = bytearray()
    while not (packets := mqtt_packets(buffer)):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"broker closed the connection of {uid}")
        buffer += chunk
    (first, body), = packets
    if first != 0x20 or body[1] != 0:
        raise RuntimeError(f"broker refused {uid}: CONNACK {first:#x} reason {body[1]:#x}")
    return RawDevice(uid, sock, mqtt_str(f"fleet/v1/{uid}/events"))
