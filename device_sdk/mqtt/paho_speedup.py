"""Make paho-mqtt's decoding of received packets cheaper; behaviour stays the same.

paho 2.2.0 builds a fresh ``Properties`` for every received PUBLISH, and its constructor
rebuilds three lookup tables (the property names, types and the packets each applies to)
each time: measured here, that was most of paho's CPU per received message (the fleet
worker's receive thread at ~100k messages/s, a simulated fleet receiving OTA chunks). The
tables never change, so ``SharedTableProperties`` keeps them on the class and is otherwise
paho's own class: the same validation on assignment, ``unpack``, ``json``, ``str``.

Opt-in: importing this module changes nothing. A process's entry point calls ``install()``
to swap it in for paho's packet decoder, once, and only for the paho version it was written
against (``PAHO_VERSION``); with any other version it logs that it is skipped and paho decodes
as it ships. The worker (``manage.py fleet_worker``), the simulator (``python -m device_sdk
simulate``) and the benchmarks that run either call it; libraries and the device client never
do. ``uninstall()`` restores paho's own class (tests, measurements without it).
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

PAHO_VERSION = "2.2.0"  # pinned in pyproject.toml; the module below is paho's private one
_TABLES = Properties(PacketTypes.PUBLISH)


class SharedTableProperties(Properties):
    """paho's ``Properties`` with its constant lookup tables built once, not per packet."""

    types: Any = _TABLES.types
    names: Any = _TABLES.names
    properties: Any = _TABLES.properties

    def __init__(self, packetType: int) -> None:  # paho's parameter name
        self.packetType = packetType

    def clear(self) -> None:
        """Drop every property set on this object (the tables live on the class)."""
        for name in [n for n in vars(self) if n != "packetType"]:
            delattr(self, name)


def install() -> bool:
    """Use ``SharedTableProperties`` when paho decodes received packets in this process; return
    whether it is on. Call it from an entry point, never at import."""
    try:
        version = metadata.version("paho-mqtt")
        from paho.mqtt import _packet
    except (metadata.PackageNotFoundError, ImportError) as exc:
        log.warning("paho speed-up skipped: paho-mqtt not found (%s)", exc)
        return False
    if version != PAHO_VERSION:
        log.warning("paho speed-up skipped: paho-mqtt is %s, it is written for %s only; "
                    "paho decodes packets as it ships", version, PAHO_VERSION)
        return False
    if getattr(_packet, "Properties", None) not in (Properties, SharedTableProperties):
        log.warning("paho speed-up skipped: paho's decoder uses another Properties class "
                    "(patched by someone else?); left as it is")
        return False
    if _packet.Properties is not SharedTableProperties:  # type: ignore[attr-defined]
        log.info("paho speed-up installed (paho-mqtt %s: shared Properties tables)", version)
    _packet.Properties = SharedTableProperties  # type: ignore[attr-defined]
    return True


def installed() -> bool:
    """Tell whether paho's decoder uses ``SharedTableProperties`` in this process."""
    try:
        from paho.mqtt import _packet
    except ImportError:
        return False
    return getattr(_packet, "Properties", None) is SharedTableProperties


def uninstall() -> None:
    """Give paho's decoder its own ``Properties`` class back."""
    try:
        from paho.mqtt import _packet
    except ImportError:
        return
    if getattr(_packet, "Properties", None) is SharedTableProperties:
        _packet.Properties = Properties  # type: ignore[attr-defined]
