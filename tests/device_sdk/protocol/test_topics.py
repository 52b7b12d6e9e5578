"""Topics of the v1 tree: builders, parsers, worker filters and device id validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.protocol.limits import MAX_PACKAGE_ID
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.topics import (
    DEVICE_PUBLISHES,
    FleetChannel,
    DEVICE_SUBSCRIBES,
    PAYLOAD_CAPS,
    Channel,
    DeviceTopic,
    PackageChannel,
    PackageTopic,
    channel_filter,
    device_filter,
    device_topic,
    is_valid_uid,
    package_filter,
    package_topic,
    parse_device_topic,
    parse_topic,
    shared_filter,
    validate_uid,
)

UID = "dev-0123456789abcdef"


@pytest.mark.parametrize(
    ("channel", "topic"),
    [
        (Channel.EVENTS, f"fleet/v1/{UID}/events"),
        (Channel.STATUS, f"fleet/v1/{UID}/status"),
        (Channel.OTA_OFFER, f"fleet/v1/{UID}/ota/offer"),
        (Channel.OTA_GET, f"fleet/v1/{UID}/ota/get"),
        (Channel.OTA_CHUNK, f"fleet/v1/{UID}/ota/chunk"),
        (Channel.OTA_REPORT, f"fleet/v1/{UID}/ota/report"),
    ],
)
def test_device_topics_match_the_design(channel: Channel, topic: str) -> None:
    """Each channel has exactly the topic docs/ARCHITECTURE.md names, and parses back."""
    assert device_topic(UID, channel) == topic
    assert parse_topic(topic) == DeviceTopic(UID, channel)
    assert parse_device_topic(topic) == DeviceTopic(UID, channel)


def test_every_channel_has_a_direction_and_a_cap() -> None:
    """A device publishes or subscribes to each channel, and each has a payload cap."""
    assert DEVICE_PUBLISHES | DEVICE_SUBSCRIBES == set(Channel)
    assert not DEVICE_PUBLISHES & DEVICE_SUBSCRIBES
    assert set(PAYLOAD_CAPS) == set(Channel) | set(PackageChannel) | set(FleetChannel)


def test_package_fan_out_topics() -> None:
    """Chunks of one package may go to a whole wave under fleet/v1/pkg/{pkg}/, on a topic
    kept short: each of its bytes crosses the broker once per chunk and device."""
    assert package_topic(14) == "fleet/v1/pkg/14/c"
    assert package_filter(14) == "fleet/v1/pkg/14/#"
    assert parse_topic("fleet/v1/pkg/14/c") == PackageTopic(14, PackageChannel.CHUNK)
    assert parse_topic(f"fleet/v1/pkg/{MAX_PACKAGE_ID}/c") == PackageTopic(
        MAX_PACKAGE_ID, PackageChannel.CHUNK
    )


def test_worker_filters() -> None:
    """Workers share a channel through MQTT 5 shared subscriptions."""
    assert shared_filter("ingest", Channel.EVENTS) == "$share/ingest/fleet/v1/+/events"
    assert shared_filter("ota", Channel.OTA_GET) == "$share/ota/fleet/v1/+/ota/get"
    assert channel_filter(Channel.STATUS) == "fleet/v1/+/status"
    assert device_filter(UID) == f"fleet/v1/{UID}/#"


@pytest.mark.parametrize("uid", ["a", "A-Z_0-9", "x" * 64, UID])
def test_valid_device_ids(uid: str) -> None:
    """Letters, digits, '-' and '_', 1 to 64 of them."""
    assert is_valid_uid(uid)
    assert validate_uid(uid) == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "x" * 65,
        "a/b",
        "+",
        "#",
        "dev+1",
        "dev#",
        "$SYS",
        "a b",
        "dev.1",
        "é",
        "dev\n",
        "dev\x00",
        "pkg",
        12,
        None,
        b"dev",
    ],
)
def test_invalid_device_ids(uid: object) -> None:
    """Wildcards, separators, '$', non-ASCII, empty, overlong and the reserved 'pkg' refused."""
    assert not is_valid_uid(uid)
    with pytest.raises(ProtocolError) as caught:
        validate_uid(uid)
    assert caught.value.reason is Reason.SCHEMA_MISMATCH
    with pytest.raises(ProtocolError):
        device_topic(uid, Channel.EVENTS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "fleet/v1",
        "fleet/v1/",
        "fleet/v2/dev/events",
        "fleet/v1/dev",
        "fleet/v1/dev/",
        "fleet/v1/dev/events/",
        "fleet/v1/dev/ota",
        "fleet/v1/dev/ota/put",
        "fleet/v1//events",
        "fleet/v1/+/events",
        "$share/ingest/fleet/v1/dev/events",
        "fleet/v1/pkg/c",
        "fleet/v1/pkg/014/c",
        "fleet/v1/pkg/-1/c",
        f"fleet/v1/pkg/{MAX_PACKAGE_ID + 1}/c",
        "fleet/v1/pkg/1/offer",
        "fleet/v1/pkg/1/c/x",
        "fleet/v1/pkg/1/chunk",  # the fan-out's name before it was shortened
        "fleet/v1/pkg/１/c",  # a full-width digit is not an ASCII digit
        b"fleet/v1/dev/events",
        None,
    ],
)
def test_parse_refuses_foreign_topics(topic: object) -> None:
    """Anything outside the v1 tree is refused with SCHEMA_MISMATCH."""
    with pytest.raises(ProtocolError) as caught:
        parse_topic(topic)
    assert caught.value.reason is Reason.SCHEMA_MISMATCH


def test_parse_device_topic_refuses_package_topics() -> None:
    """The per-device consumers never mistake a fan-out topic for a device's."""
    with pytest.raises(ProtocolError):
        parse_device_topic("fleet/v1/pkg/3/c")


@pytest.mark.parametrize(("group", "pkg"), [("a/b", 1), ("+", 1), ("", 1)])
def test_builders_refuse_bad_arguments(group: str, pkg: int) -> None:
    """Share groups use the device id charset; package ids are non-negative ints in range."""
    with pytest.raises(ProtocolError):
        shared_filter(group, Channel.EVENTS)
    for bad in (-1, MAX_PACKAGE_ID + 1, "1", True):
        with pytest.raises(ProtocolError):
            package_topic(bad)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        device_topic(UID, "ota/put")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(uid=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), channel=st.sampled_from(Channel))
def test_topics_round_trip(uid: str, channel: Channel) -> None:
    """Every valid device id and channel builds a topic that parses back to them."""
    if uid == "pkg":
        return
    assert parse_topic(device_topic(uid, channel)) == DeviceTopic(uid, channel)
