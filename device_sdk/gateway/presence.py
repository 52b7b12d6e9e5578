"""The gateway's own presence: a last will and a retained status on ``fleet/v1/{gateway}/status``.

Each child's status is published by the gateway on the child's behalf, so when the gateway's
host dies (power, ``kill -9``, a cut cable) nothing would tell the fleet its children are gone.
The gateway therefore connects with a last will, the device offline payload (``{"state": 0}``)
retained on the device status topic under its own uid, and publishes its own retained online
status on every connect. The server marks offline every child whose presence came through a
gateway whose status goes offline (``fleet.devices.presence.apply_gateway_status``).

The status is the device status codec unchanged (``device_sdk.protocol.status``), so every
reader of ``fleet/v1/+/status`` parses it. A gateway runs no model: its online status names no
model, slot 0, sequence 0, an empty op list and zero arena and slot bytes; ``firmware_version``
says it is this gateway program, ``uptime_s`` counts from the gateway's start and ``free_ram``
is the host's available memory.

The broker grants a gateway exactly one publish of its own: this status topic. Mosquitto
2.0.11 checks the will against that ACL only when it publishes it, and drops a will the ACL
denies without a word; a gateway whose role lacks the grant (provisioned before gateways had a
will) sees its online status refused (PUBACK 135), which the ``Uplink`` logs as an error.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Final

from device_sdk.protocol.limits import MAX_VERSION_TEXT
from device_sdk.protocol.status import (
    OFFLINE_PAYLOAD,
    Capabilities,
    LinkState,
    Status,
    encode_status,
)
from device_sdk.protocol.topics import Channel, device_topic, validate_uid

__all__ = ["GatewayPresence", "gateway_capabilities", "gateway_status_topic"]

_PROGRAM: Final = "device_sdk-gateway"


def gateway_status_topic(uid: str) -> str:
    """Return the topic of gateway ``uid``'s own status: the device status topic of its uid."""
    return device_topic(uid, Channel.STATUS)


def gateway_capabilities() -> Capabilities:
    """Return what a gateway reports as capabilities: its program and version, no model."""
    try:
        version = metadata.version("tinyml-fleet")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return Capabilities(
        firmware_version=f"{_PROGRAM} {version}"[:MAX_VERSION_TEXT],
        tflm_version="",
        ops=[],
        arena_bytes=0,
        slot_bytes=0,
        pointer_bits=struct.calcsize("P") * 8,
    )


@dataclass(frozen=True)
class GatewayPresence:
    """The last will and the online status of one gateway (given to its ``Uplink``)."""

    uid: str
    started_at: float = field(default_factory=time.monotonic)
    capabilities: Capabilities = field(default_factory=gateway_capabilities)

    def __post_init__(self) -> None:
        validate_uid(self.uid)  # ProtocolError for an id that cannot name a topic

    @property
    def topic(self) -> str:
        """Return the gateway's status topic (the will's topic too)."""
        return gateway_status_topic(self.uid)

    @property
    def offline(self) -> bytes:
        """Return the last will payload, the same 8 bytes devices register."""
        return OFFLINE_PAYLOAD

    def online(self) -> bytes:
        """Return the online status to publish (retained) now, on a (re)connect."""
        return encode_status(Status(
            LinkState.ONLINE, model=None, slot=0,
            uptime_s=int(time.monotonic() - self.started_at), free_ram=_free_ram(), seq=0,
            capabilities=self.capabilities,
        ))


def _free_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
