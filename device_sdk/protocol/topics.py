"""Build and parse the MQTT topics of wire protocol v1, and the filters workers subscribe to.

    fleet/v1/{uid}/events | status | ota/offer | ota/get | ota/chunk | ota/report
    fleet/v1/{uid}/ota/withdraw               server -> device: stop a package (abort, rollback)
    fleet/v1/{uid}/ota/key                    server -> device: the key of a package's fan-out
    fleet/v1/pkg/{pkg}/c                      fan-out of one package's chunks to a whole wave
    fleet/v1/keys                             the fleet's signed trust records (retained, read-only)
    $share/{group}/fleet/v1/+/{channel}       what each worker of a group subscribes to

A device id is 1..64 characters of ``[A-Za-z0-9_-]``, which keeps the MQTT wildcards ``+``
and ``#``, the level separator ``/`` and the ``$`` of system topics out of every topic built
from it. ``pkg`` is reserved: a device by that name would own the fan-out subtree.
Every refusal is a ProtocolError with SCHEMA_MISMATCH.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

from device_sdk.protocol.limits import (
    MAX_CHUNK_MSG_BYTES,
    MAX_CHUNK_REQUEST_BYTES,
    MAX_EVENTS_BYTES,
    MAX_OFFER_BYTES,
    MAX_PACKAGE_ID,
    MAX_REPORT_BYTES,
    MAX_STATUS_BYTES,
    MAX_TRUST_BUNDLE_BYTES,
    MAX_UID_CHARS,
    MAX_WITHDRAW_BYTES,
)
from device_sdk.protocol.reasons import ProtocolError, Reason

__all__ = [
    "DEVICE_PUBLISHES",
    "DEVICE_SUBSCRIBES",
    "PAYLOAD_CAPS",
    "PREFIX",
    "RESERVED_UIDS",
    "Channel",
    "DeviceTopic",
    "FleetChannel",
    "FleetTopic",
    "PackageChannel",
    "PackageTopic",
    "channel_filter",
    "device_filter",
    "device_topic",
    "fleet_topic",
    "is_valid_uid",
    "package_filter",
    "package_topic",
    "parse_device_topic",
    "parse_topic",
    "shared_filter",
    "validate_uid",
]

PREFIX: Final = "fleet/v1"
_PACKAGE_LEVEL: Final = "pkg"
RESERVED_UIDS: Final = frozenset({_PACKAGE_LEVEL})
_NAME: Final = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_UID_CHARS}}}")
_E = TypeVar("_E", bound=StrEnum)
# Decimal without leading zeros, so each package has exactly one topic.
_PACKAGE_ID: Final = re.compile(r"0|[1-9][0-9]{0,9}")


class Channel(StrEnum):
    """Say which message a device topic carries. Wire values: never rename."""

    EVENTS = "events"
    STATUS = "status"
    OTA_OFFER = "ota/offer"
    OTA_GET = "ota/get"
    OTA_CHUNK = "ota/chunk"
    OTA_REPORT = "ota/report"
    OTA_WITHDRAW = "ota/withdraw"
    OTA_KEY = "ota/key"


class PackageChannel(StrEnum):
    """Say which message a package fan-out topic carries. Wire values: never rename.

    One letter: every device of a wave receives every fan-out chunk, so each byte of this
    topic crosses the broker (number of chunks x devices) times. (It was ``chunk`` before
    the wire-overhead work of bench/rollout.py; a device of that time subscribed to the
    package's whole subtree and ignores the new name, falling back to its ``ota/get``
    repairs, and so does a gateway of that time.)
    """

    CHUNK = "c"


class FleetChannel(StrEnum):
    """Say which fleet-wide message a ``fleet/v1/{name}`` topic (one level) carries.

    Wire values: never rename. ``keys`` is the trust bundle (``manifest.py``: rotation and
    policy records, COSE_Sign1 each, in a CBOR array), retained by the broker; devices may
    only read it.
    """

    KEYS = "keys"


DEVICE_PUBLISHES: Final = frozenset(
    {Channel.EVENTS, Channel.STATUS, Channel.OTA_GET, Channel.OTA_REPORT}
)
DEVICE_SUBSCRIBES: Final = frozenset(
    {Channel.OTA_OFFER, Channel.OTA_CHUNK, Channel.OTA_WITHDRAW, Channel.OTA_KEY})

# Size caps a receiver applies before parsing anything it got on a channel.
PAYLOAD_CAPS: Final[Mapping[Channel | PackageChannel | FleetChannel, int]] = {
    Channel.EVENTS: MAX_EVENTS_BYTES,
    Channel.STATUS: MAX_STATUS_BYTES,
    Channel.OTA_OFFER: MAX_OFFER_BYTES,
    Channel.OTA_GET: MAX_CHUNK_REQUEST_BYTES,
    Channel.OTA_CHUNK: MAX_CHUNK_MSG_BYTES,
    Channel.OTA_REPORT: MAX_REPORT_BYTES,
    Channel.OTA_WITHDRAW: MAX_WITHDRAW_BYTES,
    Channel.OTA_KEY: MAX_WITHDRAW_BYTES,
    PackageChannel.CHUNK: MAX_CHUNK_MSG_BYTES,
    FleetChannel.KEYS: MAX_TRUST_BUNDLE_BYTES,
}


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed ``fleet/v1/{uid}/{channel}`` topic."""

    uid: str
    channel: Channel


@dataclass(frozen=True, slots=True)
class PackageTopic:
    """A parsed ``fleet/v1/pkg/{pkg}/{channel}`` topic."""

    pkg: int
    channel: PackageChannel


@dataclass(frozen=True, slots=True)
class FleetTopic:
    """A parsed fleet-wide ``fleet/v1/{channel}`` topic (one level below the prefix)."""

    channel: FleetChannel


def is_valid_uid(uid: object) -> bool:
    """Return whether ``uid`` may name a device in topics."""
    return isinstance(uid, str) and bool(_NAME.fullmatch(uid)) and uid not in RESERVED_UIDS


def validate_uid(uid: object) -> str:
    """Return ``uid`` if it may name a device in topics, else raise ProtocolError."""
    if not is_valid_uid(uid):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"not a device id: {str(uid)[:80]!r}")
    return uid  # type: ignore[return-value]


def device_topic(uid: str, channel: Channel) -> str:
    """Return the topic of ``channel`` in device ``uid``'s subtree."""
    return f"{PREFIX}/{validate_uid(uid)}/{_member(Channel, channel)}"


def device_filter(uid: str) -> str:
    """Return the filter of device ``uid``'s whole subtree (what its ACL grants)."""
    return f"{PREFIX}/{validate_uid(uid)}/#"


def package_topic(pkg: int, channel: PackageChannel = PackageChannel.CHUNK) -> str:
    """Return the fan-out topic of package ``pkg``."""
    return f"{PREFIX}/{_PACKAGE_LEVEL}/{_check_pkg(pkg)}/{_member(PackageChannel, channel)}"


def fleet_topic(channel: FleetChannel = FleetChannel.KEYS) -> str:
    """Return the fleet-wide topic of ``channel`` (``fleet/v1/keys``)."""
    return f"{PREFIX}/{_member(FleetChannel, channel)}"


def package_filter(pkg: int) -> str:
    """Return the filter a device subscribes to for package ``pkg``'s fan-out."""
    return f"{PREFIX}/{_PACKAGE_LEVEL}/{_check_pkg(pkg)}/#"


def channel_filter(channel: Channel) -> str:
    """Return the filter matching ``channel`` of every device."""
    return f"{PREFIX}/+/{_member(Channel, channel)}"


def shared_filter(group: str, channel: Channel) -> str:
    """Return the MQTT 5 shared subscription that spreads ``channel`` over a worker group.

    The broker hands each message to one subscriber of the group, so any number of workers
    can consume the same channel; the ACL must allow this full ``$share/...`` filter.
    """
    if not (isinstance(group, str) and _NAME.fullmatch(group)):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"not a share group: {str(group)[:80]!r}")
    return f"$share/{group}/{channel_filter(channel)}"


def parse_topic(topic: object) -> DeviceTopic | PackageTopic | FleetTopic:
    """Parse a topic of the v1 tree, refusing any other topic with ProtocolError."""
    if not isinstance(topic, str) or not topic.startswith(PREFIX + "/"):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"not a {PREFIX} topic")
    head, slash, rest = topic[len(PREFIX) + 1 :].partition("/")
    if not slash and head in set(FleetChannel):
        return FleetTopic(FleetChannel(head))
    if head == _PACKAGE_LEVEL:
        pkg, _, name = rest.partition("/")
        if not _PACKAGE_ID.fullmatch(pkg) or int(pkg) > MAX_PACKAGE_ID:
            raise ProtocolError(Reason.SCHEMA_MISMATCH, f"not a package id: {pkg[:20]!r}")
        return PackageTopic(int(pkg), _member(PackageChannel, name))
    return DeviceTopic(validate_uid(head), _member(Channel, rest))


def parse_device_topic(topic: object) -> DeviceTopic:
    """Parse a device topic, refusing package topics and anything else with ProtocolError."""
    parsed = parse_topic(topic)
    if not isinstance(parsed, DeviceTopic):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "a package topic, not a device topic")
    return parsed


def _member(enum: type[_E], name: str) -> _E:
    try:
        return enum(name)
    except (ValueError, TypeError):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"unknown channel: {name[:40]!r}") from None


def _check_pkg(pkg: int) -> int:
    if type(pkg) is not int or not 0 <= pkg <= MAX_PACKAGE_ID:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"not a package id: {pkg!r}")
    return pkg
