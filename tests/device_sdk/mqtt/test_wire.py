"""MQTT wire primitives against the specification's own examples (MQTT 5.0, 1.5.5, 1.5.4)."""

from __future__ import annotations

import pytest

from device_sdk.mqtt.wire import mqtt_str, packet, varint


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"), (2_097_151, b"\xff\xff\x7f"), (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
])
def test_variable_byte_integers_are_the_specifications(value: int, encoded: bytes) -> None:
    """The table of 1.5.5: each boundary takes one byte more."""
    assert varint(value) == encoded


def test_strings_and_packets_carry_their_lengths() -> None:
    """A string is its two-byte length then UTF-8; a packet's remaining length counts its body."""
    assert mqtt_str("MQTT") == b"\x00\x04MQTT"
    assert mqtt_str("é") == b"\x00\x02\xc3\xa9"
    assert packet(0xE0, b"") == b"\xe0\x00"
    assert packet(0x30, b"x" * 200)[:3] == b"\x30\xc8\x01"
