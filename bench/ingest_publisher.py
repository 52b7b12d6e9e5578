"""The device side of ``bench/ingest.py``: publisher processes sending pre-encoded batches.

Each publisher process connects its share of the devices (one MQTT 5 connection per device,
client id = username = device uid), sends one warm-up batch per device, says it is ready on
stdout, and on "go" (stdin) publishes its batches at QoS 1 with at most ``PUBLISH_WINDOW``
unacknowledged per device. The default client writes pre-encoded MQTT packets to plain sockets
(a few µs of CPU per message, since publishers share the machine with what is measured);
``paho`` uses paho-mqtt (~75 µs per message).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mqtt_raw import RawDevice

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the streams' start
PUBLISH_WINDOW = 50  # QoS 1 messages in flight per device, below the broker's maximum (100)


def run_publisher(spec_path: str) -> None:
    """Publisher process: connect its devices, send the warm-up, say ready, publish on 'go'.

    The warm-up is each device's first batch; after 'go' the rest follows. Prints
    ``{"messages", "refused", "seconds"}`` (the timed part) once every message has its PUBACK.
    """
    from testkit.traffic import make_stream, payload_of

    spec = json.loads(Path(spec_path).read_text())
    payloads = {uid: [payload_of(m) for m in make_stream(
        uid, batches=spec["batches"], per_batch=spec["per_batch"], package=0,
        start_ms=START_MS, seed=spec["seed"], labels=8)] for uid, _ in spec["devices"]}
    publish = _publish_paho if spec["client"] == "paho" else _publish_raw
    messages, refused, seconds = publish(spec, payloads)
    print(json.dumps({"messages": messages, "refused": refused, "seconds": seconds}),
          flush=True)


def _wait_for_go() -> float:
    print("ready", flush=True)
    sys.stdin.readline()
    return time.monotonic()


def _publish_paho(spec: dict[str, Any], payloads: dict[str, list[bytes]]) -> tuple[int, int, float]:
    """Publish through one paho client per device (about 75 µs of CPU per message)."""
    from device_sdk.mqtt import BrokerEndpoint, connect, new_client

    endpoint = BrokerEndpoint(spec["host"], spec["port"], tls=False)
    acked = {"n": 0, "refused": 0}
    lock = threading.Lock()  # every client's network thread counts here
    clients = []
    for uid, password in spec["devices"]:
        c = new_client(endpoint, client_id=uid, username=uid, password=password,
                       max_inflight=PUBLISH_WINDOW, max_queued=0)

        def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            with lock:
                acked["n"] += 1
                acked["refused"] += getattr(reason, "value", 0) >= 0x80

        c.on_publish = on_publish
        connect(c, endpoint, keepalive=60)
        clients.append((uid, c))

    def publish(part: slice) -> int:
        sent = 0
        for uid, c in clients:
            for payload in payloads[uid][part]:
                c.publish(f"fleet/v1/{uid}/events", payload, qos=1)
                sent += 1
        return sent

    warmup = publish(slice(None, 1))
    while acked["n"] < warmup:
        time.sleep(0.01)
    started = _wait_for_go()
    total = warmup + publish(slice(1, None))
    while acked["n"] < total:
        time.sleep(0.01)
    seconds = time.monotonic() - started
    for _, c in clients:
        c.disconnect()
        c.loop_stop()
    return total - warmup, acked["refused"], seconds


def _publish_raw(spec: dict[str, Any], payloads: dict[str, list[bytes]]) -> tuple[int, int, float]:
    """Publish pre-encoded MQTT 5 PUBLISH packets (QoS 1) over one plain socket per device.

    The same traffic as a device's client sends (its own connection and credentials, QoS 1,
    at most PUBLISH_WINDOW unacknowledged), at a few µs of CPU per message instead of paho's
    ~75: the simulated devices share the machine with what is measured. Every message is
    counted once its PUBACK arrived; a PUBACK reason >= 0x80 is a refusal.
    """
    import selectors

    from mqtt_raw import connect_device, publish_packet

    selector = selectors.DefaultSelector()
    queues: dict[RawDevice, list[bytes]] = {}
    for uid, password in spec["devices"]:
        device = connect_device(spec["host"], spec["port"], uid, password)
        # Packet ids cycle through 1..65535; never more than PUBLISH_WINDOW are in flight.
        queues[device] = [publish_packet(device.topic, i % 65_535 + 1, payload)
                          for i, payload in enumerate(payloads[uid])]
        queues[device].reverse()  # popped from the end
        selector.register(device.sock, selectors.EVENT_READ, device)
    acked = refused = 0

    def send(device: RawDevice, count: int) -> None:
        queue = queues[device]
        if queue and count:
            batch = queue[-count:]
            del queue[-count:]
            device.inflight += len(batch)
            device.sock.sendall(b"".join(reversed(batch)))

    def pump(until: int, refill: bool) -> None:
        """Read PUBACKs until ``until`` in all; with ``refill``, send one message per ack."""
        nonlocal acked, refused
        while acked < until:
            events = selector.select(timeout=60)
            if not events:
                raise RuntimeError(f"no PUBACK for 60 s ({acked} of {until} acknowledged)")
            for key, _ in events:
                device = key.data
                done, no = device.read_pubacks()
                acked += done
                refused += no
                if refill:
                    send(device, done)

    for device in queues:  # the warm-up: each device's first batch
        send(device, 1)
    warmup = len(queues)
    pump(warmup, refill=False)
    total = warmup + sum(len(q) for q in queues.values())
    started = _wait_for_go()
    for device in queues:
        send(device, PUBLISH_WINDOW)
    pump(total, refill=True)
    seconds = time.monotonic() - started
    for device in queues:
        device.close()
    return total - warmup, refused, seconds
