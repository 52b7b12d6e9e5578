"""The simulator bench's monitor: a subscriber counting the events that reached the broker's
subscribers (by the second they were inferred) and following Mosquitto's own client count
($SYS/broker/clients/connected). Connects as the dynsec admin, which may read $SYS.

Imported by ``bench/simulator.py`` (run as a script: ``bench/`` is on ``sys.path`` as its
folder).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from simulator_enroll import log  # bench/ is the script's folder


class Monitor:
    """Count delivered events by the second they were inferred; follow $SYS client counts."""

    def __init__(self, broker: Any) -> None:
        from device_sdk.mqtt import BrokerEndpoint, connect, new_client
        from device_sdk.protocol.events import EventBatch, decode_message

        self.by_second: Counter[int] = Counter()
        self.messages = 0
        self.clients_connected: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        endpoint = BrokerEndpoint(broker.host, broker.port, tls=False)
        self.client = new_client(endpoint, client_id="bench-sim-monitor",
                                 username=broker.admin_username, password=broker.admin_password)
        subscribed = threading.Event()
        granted: list[Any] = []

        def on_subscribe(client: Any, userdata: Any, mid: int, rcs: list[Any], props: Any) -> None:
            granted.extend(rcs)
            subscribed.set()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            try:
                if message.topic == "$SYS/broker/clients/connected":
                    with self.lock:
                        self.clients_connected.append((time.time(), int(message.payload)))
                    return
                batch = decode_message(bytes(message.payload))
                seconds = Counter(e.t_ms // 1000 for e in batch.events) \
                    if isinstance(batch, EventBatch) else Counter()
                with self.lock:
                    self.messages += 1
                    self.by_second.update(seconds)
            except Exception as exc:  # noqa: BLE001 - one would kill paho's network thread
                log(f"monitor: {exc!r}")

        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        connect(self.client, endpoint, keepalive=30)
        self.client.subscribe([("fleet/v1/+/events", 0), ("$SYS/broker/clients/connected", 0)])
        if not subscribed.wait(30) or any(rc.is_failure for rc in granted):
            raise RuntimeError(f"monitor cannot subscribe: {granted}")

    def events_between(self, start: float, end: float) -> int:
        """Return the delivered events inferred in whole seconds within [start, end)."""
        with self.lock:
            return sum(n for s, n in self.by_second.items() if start <= s < end)

    def broker_connected(self, start: float, end: float) -> int | None:
        """Return the lowest client count the broker stood at within [start, end].

        Mosquitto publishes the $SYS count only when it changed: the value in force at
        ``start`` is the last one published before it.
        """
        with self.lock:
            before = [n for t, n in self.clients_connected if t < start]
            values = before[-1:] + [n for t, n in self.clients_connected if start <= t <= end]
        return min(values) if values else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

