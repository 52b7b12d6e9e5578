"""Make paho-mqtt's decoding of received packets cheaper; behaviour stays the same.

paho 2.2.0 builds a fresh ``Properties`` for every received PUBLISH, and its constructor
rebuilds three lookup tables (the property names, types and the packets each applies to)
each time: measured here, that was most of paho's CPU per received message (the fleet
worker's receive thread at ~100k messages/s, a simulated fleet receiving OTA chunks). The
tables never change, so ``SharedTableProperties`` keeps them on the class and is otherwise
paho's own class: the same validation on assignment, ``unpack``, ``json``, ``str``.

``install`` swaps it in for paho's packet decoder, once per process, and only for the paho
version it was written against (``PAHO_VERSION``); with any other version it does nothing.
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
    """Use ``SharedTableProperties`` when paho decodes received packets; return whether it is on."""
    try:
        version = metadata.version("paho-mqtt")
        from paho.mqtt import _packet
    except (metadata.PackageNotFoundError, ImportError):
        return False
    if version != PAHO_VERSION or getattr(_packet, "Properties", None) not in (
            Properties, SharedTableProperties):
        log.debug("paho-mqtt %s: packet decoding left as it is", version)
        return False
    _packet.Properties = SharedTableProperties  # type: ignore[attr-defined]
    return True
