"""Client-to-broker MQTT 5 topic aliases of one connection (MQTT 5.0 section 3.3.2.3.4).

A :meth:`~device_sdk.mqtt.link.Link.publish` made with ``alias=True`` names its topic
once per connection, with a Topic Alias property, and from then on sends an empty topic plus
the alias, which saves the whole topic string (~36 bytes of ``fleet/v1/{uid}/events``) in every
later packet. An alias is a property of one network connection, not of the session, so the map
starts empty at every CONNACK and is only used up to the Topic Alias Maximum that CONNACK
announced (absent or 0: no aliases, full topics). A fresh paho client per attempt is what makes
this safe: a reused client would resend its unacknowledged publishes after a reconnect exactly
as they were (empty topic, an alias the new connection never heard of), and the broker would
close the connection for a protocol error, again at every reconnect (see paho's
``Client.drop_out_messages``). Here those publishes die with their client; the owner's outbox
sends them again through :meth:`~device_sdk.mqtt.link.Link.publish`, which names the topic afresh on the new
connection. Retained messages and the last will are not aliased by the client (it never asks).
"""

from __future__ import annotations

import functools
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["TopicAliases", "alias_properties", "topic_alias_maximum"]


class TopicAliases:
    """The client-to-broker topic aliases of one MQTT 5 connection.

    Aliases are numbered from 1 up to ``maximum`` (the broker's Topic Alias Maximum) in the
    order topics first ask for one, and never reassigned: a device publishes on a handful of
    topics, and a topic that finds every alias taken is simply sent in full.
    """

    __slots__ = ("_bound", "maximum")

    def __init__(self, maximum: int) -> None:
        self.maximum = max(0, maximum)
        self._bound: dict[str, int] = {}  # topic -> alias the broker has been told about

    def lookup(self, topic: str) -> tuple[int, bool]:
        """Return ``(alias, known)``: a bound alias, a free one to bind, or ``(0, False)``."""
        number = self._bound.get(topic)
        if number is not None:
            return number, True
        if len(self._bound) < self.maximum:
            return len(self._bound) + 1, False
        return 0, False

    def bind(self, topic: str, number: int) -> None:
        """Note that a publish carrying ``topic`` and ``number`` is on its way to the broker."""
        self._bound[topic] = number

    def __len__(self) -> int:
        return len(self._bound)


def topic_alias_maximum(props: Any) -> int:
    """Return the Topic Alias Maximum a CONNACK announced; absent means 0 (MQTT 5 3.2.2.3.8)."""
    value = getattr(props, "TopicAliasMaximum", 0) if props is not None else 0
    return value if isinstance(value, int) else 0


@functools.lru_cache(maxsize=64)
def alias_properties(number: int) -> Properties:
    """The PUBLISH properties naming topic alias ``number``, built once and shared by every
    link (paho only packs them; nothing changes them): building paho's ``Properties`` took 4 %
    of a simulated device's CPU in a 10,000-device rollout (bench/rollout.py)."""
    properties = Properties(PacketTypes.PUBLISH)
    properties.TopicAlias = number
    return properties
