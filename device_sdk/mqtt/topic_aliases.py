"""Client-to-broker MQTT 5 topic aliases of one connection (MQTT 5.0 section 3.3.2.3.4).

:class:`~device_sdk.mqtt.link.Link` names a topic once per connection and then sends only its
alias; see that module's docstring for why the map lives and dies with one connection.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TopicAliases", "topic_alias_maximum"]


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
