"""The shared-table ``Properties`` behaves like paho's own on every packet property."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from device_sdk.mqtt.paho_speedup import SharedTableProperties, install


def _filled(cls: type[Properties]) -> Properties:
    props = cls(PacketTypes.PUBLISH)
    props.TopicAlias = 7
    props.MessageExpiryInterval = 60
    props.ContentType = "application/cbor"
    props.CorrelationData = b"\x01\x02"
    props.UserProperty = ("k", "v")
    props.UserProperty = ("k2", "v2")
    props.SubscriptionIdentifier = 3
    return props


def test_packs_unpacks_and_prints_like_paho() -> None:
    ours, theirs = _filled(SharedTableProperties), _filled(Properties)
    assert ours.pack() == theirs.pack()
    assert (str(ours), ours.json()) == (str(theirs), theirs.json())
    decoded, length = SharedTableProperties(PacketTypes.PUBLISH).unpack(theirs.pack())
    reference, ref_length = Properties(PacketTypes.PUBLISH).unpack(theirs.pack())
    assert (decoded.json(), length) == (reference.json(), ref_length)
    assert decoded.UserProperty == [("k", "v"), ("k2", "v2")]


def test_clear_and_checks_on_assignment_are_paho_s() -> None:
    props = _filled(SharedTableProperties)
    props.clear()
    assert props.isEmpty() and props.packetType == PacketTypes.PUBLISH
    with pytest.raises(MQTTException):
        props.TopicAlias = 0  # out of range
    with pytest.raises(MQTTException):
        props.SessionExpiryInterval = 5  # not a PUBLISH property
    with pytest.raises(MQTTException):
        props.NoSuchProperty = 1


def test_install_replaces_the_decoder_s_class() -> None:
    from paho.mqtt import _packet

    assert install() is True
    assert _packet.Properties is SharedTableProperties
    assert install() is True  # idempotent
