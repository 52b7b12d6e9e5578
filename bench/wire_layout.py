"""The wire bench's packet layout: the MQTT 5 QoS 1 PUBLISH sizes computed by hand.

The topic a device publishes on, the Topic Alias property, the three framings the bench
measures and the size of a packet in each; every packet ``bench/wire.py`` captures is checked
against these. Imported by ``bench/wire.py`` (run as a script: ``bench/`` is on ``sys.path`` as
its folder).
"""

from __future__ import annotations

UID = "dev-0123456789abcdef"  # 20 characters, like a short hex serial
TOPIC = f"fleet/v1/{UID}/events"
ALIAS_MAXIMUM = 10  # what the listener announces: Mosquitto 2's default max_topic_alias
ALIAS_PROPERTY = 3  # Topic Alias property: identifier 0x23 and a two-byte value

FRAMINGS = ("aliased", "first_packet", "no_alias")


def varint_len(value: int) -> int:
    """Return the bytes of ``value`` as an MQTT variable byte integer."""
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    """Return the varint at ``at`` (7 bits a byte, low first: MQTT's, and the batch columns'
    minimums) and the offset after it."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def publish_packet_size(topic: str, payload_len: int, props_len: int = 0) -> int:
    """Return the size of an MQTT 5 QoS 1 PUBLISH, computed by hand from its layout."""
    # topic (length + bytes), packet id, property length + properties, payload
    remaining = 2 + len(topic.encode()) + 2 + varint_len(props_len) + props_len + payload_len
    return 1 + varint_len(remaining) + remaining


def framed_size(framing: str, payload_len: int, first: bool) -> int:
    """Return the layout size of a packet in ``framing`` (the first of its connection or not)."""
    if framing == "no_alias":
        return publish_packet_size(TOPIC, payload_len)
    named = first or framing == "first_packet"
    return publish_packet_size(TOPIC if named else "", payload_len, ALIAS_PROPERTY)
