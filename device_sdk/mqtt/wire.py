"""MQTT's wire primitives (MQTT 5.0, section 1.5), for the few places that speak raw MQTT:
the broker admin's one-shot session take-over and the benchmarks' raw device publishers."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (7 bits a byte, low first, high bit = more follow)."""
    out = bytearray()
    while True:
        value, digit = value >> 7, value & 0x7F
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mqtt_str(text: str | bytes) -> bytes:
    """Encode a UTF-8 Encoded String (two-byte big-endian length, then the bytes)."""
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def packet(first_byte: int, body: bytes) -> bytes:
    """Frame a control packet: its first byte, the remaining length, the body."""
    return bytes([first_byte]) + varint(len(body)) + body
