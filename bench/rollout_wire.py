"""The rollout bench's wire accounting: the broker's own byte counters ($SYS) and where those
bytes went, by kind of message (the ``breakdown`` of ``wire_overhead``).

Imported by ``bench/rollout.py`` (run as a script: ``bench/`` is on ``sys.path`` as its folder).
"""

from __future__ import annotations

import threading
import time
from typing import Any


class SysMonitor:
    """Follow $SYS/broker/bytes/{received,sent} (published every sys_interval seconds)."""

    TOPICS = ("$SYS/broker/bytes/received", "$SYS/broker/bytes/sent")

    def __init__(self, broker: Any) -> None:
        from device_sdk.mqtt import BrokerEndpoint, connect, new_client

        self.values: dict[str, tuple[int, float]] = {}
        self.cond = threading.Condition()
        endpoint = BrokerEndpoint(broker.host, broker.port, tls=False)
        self.client = new_client(endpoint, client_id="bench-sys-monitor",
                                 username=broker.admin_username, password=broker.admin_password)
        self.subscribed = threading.Event()
        self.granted: list[Any] = []

        def on_subscribe(client: Any, userdata: Any, mid: int, rcs: list[Any], props: Any) -> None:
            self.granted = list(rcs)
            self.subscribed.set()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            with self.cond:
                self.values[message.topic] = (int(message.payload), time.monotonic())
                self.cond.notify_all()

        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        connect(self.client, endpoint, keepalive=30)
        self.client.subscribe([(t, 0) for t in self.TOPICS])
        if not self.subscribed.wait(30) or any(rc.is_failure for rc in self.granted):
            raise RuntimeError(f"cannot subscribe to $SYS: {self.granted}")

    def fresh(self, timeout: float = 30.0) -> tuple[int, int]:
        """Return (received, sent) as of a $SYS update published after this call.

        Mosquitto republishes a counter only when it changed since its last update. ``sent``
        changes at every update (the update itself reaches this monitor), so a ``sent`` newer
        than this call proves an update ran; ``received`` as last published (in that update,
        or earlier if it had not changed) is then current. Waiting for a new ``received`` too
        made this wait for the idle devices' next keepalive ping: up to a minute of nothing.
        """
        since = time.monotonic()
        deadline = since + timeout
        sent, received = self.TOPICS[1], self.TOPICS[0]
        with self.cond:
            while not (sent in self.values and self.values[sent][1] > since
                       and received in self.values):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("no $SYS byte counters from the broker")
                self.cond.wait(left)
        time.sleep(0.3)  # whichever order the broker sends the two in, one update's pair is in
        with self.cond:
            return self.values[received][0], self.values[sent][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fanout_server_bytes(package_id: int, fanout_bytes: int, chunk: int) -> int:
    """Bytes of the worker's own fan-out publishes (one copy per chunk, QoS 1, and their
    PUBACKs), rebuilt from the bytes it counted: each message framed as delivery frames it."""
    from device_sdk.mqtt.lean_client import publish_size
    from device_sdk.protocol.ota_messages import Chunk, encode_fanout_chunk
    from device_sdk.protocol.topics import package_topic

    messages = -(-fanout_bytes // chunk)
    framing = len(encode_fanout_chunk(Chunk(package_id, 65_536, bytes(chunk)))) - chunk
    per_message = publish_size(package_topic(package_id), chunk + framing, qos=1) - chunk
    return fanout_bytes + messages * (per_message + 4)


def wire_breakdown(before: dict[tuple[str, str], tuple[int, int]],
                   after: dict[tuple[str, str], tuple[int, int]], through: int, payload: int,
                   *, fanout_leg: int) -> dict[str, dict[str, Any]]:
    """Where the bytes through the broker went during the rollout, by kind of message.

    ``devices`` is what the simulated devices sent and received (every MQTT packet counted
    whole by device_sdk.mqtt.link.WireTally); ``server`` the other leg of the same messages
    between the broker and the worker, rebuilt from them (an estimate: the worker is another
    process), plus the worker's fan-out publishes; ``unattributed`` the rest of the broker's
    own count ($SYS updates to the monitor, the worker's other traffic, estimate errors).
    Shares are of payload x devices, as ``wire_overhead`` is; the fan-out and unicast chunk
    kinds include their payload.
    """
    kinds: dict[str, dict[str, Any]] = {}
    for key in set(after):
        packets, nbytes = after[key]
        old = before.get(key, (0, 0))
        kind, direction = key
        entry = kinds.setdefault(kind, {"devices": 0, "server": 0, "packets": 0})
        entry["server" if direction == "server" else "devices"] += nbytes - old[1]
        if direction != "server":
            entry["packets"] += packets - old[0]
    kinds.setdefault("fanout_chunks", {"devices": 0, "server": 0, "packets": 0})
    kinds["fanout_chunks"]["server"] += fanout_leg
    attributed = 0
    out: dict[str, dict[str, Any]] = {}
    for kind, entry in sorted(kinds.items(), key=lambda kv: -(kv[1]["devices"] + kv[1]["server"])):
        total = entry["devices"] + entry["server"]
        if not total:
            continue
        attributed += total
        overhead = total - payload if kind == "fanout_chunks" else total
        out[kind] = {**entry, "bytes": total, "share": round(overhead / payload, 5)}
        if kind == "fanout_chunks":
            out[kind]["note"] = "share counts only the framing (payload subtracted)"
    out["unattributed"] = {"bytes": through - attributed,
                           "share": round((through - attributed) / payload, 5)}
    return out
