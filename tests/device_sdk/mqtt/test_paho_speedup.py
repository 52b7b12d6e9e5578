"""The shared-table ``Properties`` behaves like paho's own on every packet property, and it is
opt-in: nothing patches paho at import, and only the pinned paho version is patched."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from device_sdk.mqtt import paho_speedup
from device_sdk.mqtt.paho_speedup import SharedTableProperties, install


@pytest.fixture(autouse=True)
def _paho_as_shipped() -> Iterator[None]:
    """Leave paho's decoder as these tests found it (the rest of the suite runs unpatched)."""
    was = paho_speedup.installed()
    yield
    if not was:
        paho_speedup.uninstall()


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
    paho_speedup.uninstall()
    assert _packet.Properties is Properties and not paho_speedup.installed()


def test_importing_the_sdk_patches_nothing() -> None:
    """The device client, the link, the simulator and the worker's module import without
    touching paho; only an entry point's explicit install() does."""
    code = ("import device_sdk.mqtt.lean_client, device_sdk.mqtt.link, device_sdk.client, "
            "device_sdk.simulator, device_sdk.__main__\n"
            "from paho.mqtt import _packet\n"
            "from paho.mqtt.properties import Properties\n"
            "assert _packet.Properties is Properties, _packet.Properties\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_another_paho_version_is_left_alone_with_a_log_line(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from paho.mqtt import _packet

    paho_speedup.uninstall()
    monkeypatch.setattr(paho_speedup.metadata, "version", lambda _name: "2.3.0")
    with caplog.at_level(logging.WARNING, logger=paho_speedup.__name__):
        assert install() is False
    assert _packet.Properties is Properties
    assert "paho speed-up skipped: paho-mqtt is 2.3.0" in caplog.text
