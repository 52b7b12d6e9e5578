"""Measure the worker's MQTT receive cost per message, with and without the paho speed-up.

The worker's receive thread is paho's: it reads each PUBLISH from the socket, decodes it (an
MQTT 5 ``Properties`` per packet) and calls ``on_message``, which only queues it. This feeds
the same client, configured as the worker's (``new_client``: MQTT 5, ``manual_ack``), with
``--messages`` QoS 1 event PUBLISHes from a socket pair, once with paho's own decoding and
once with ``device_sdk.mqtt.paho_speedup`` installed (in that order, then again, best of
``--rounds``), and prints the CPU time per message of each.

Prints JSON lines ``{"metric", "value", "unit", "baseline", "ratio"}`` (baseline: paho's own).
Run: ``.venv/bin/python bench/paho_receive.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sdk.mqtt import BrokerEndpoint, new_client, paho_speedup


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """Return one MQTT 5 PUBLISH, QoS 1, with no properties (what Mosquitto delivers)."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big") + b"\x00" + payload
    length, remaining = bytearray(), len(body)
    while True:
        byte, remaining = remaining & 0x7F, remaining >> 7
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    return bytes([0x32]) + bytes(length) + body


def receive_seconds(messages: int, payload_bytes: int) -> float:
    """Return the receive thread's CPU seconds to take ``messages`` PUBLISHes."""
    client = new_client(BrokerEndpoint.parse("mqtt://127.0.0.1:1883"), client_id="bench-worker",
                        manual_ack=True)
    got: list[Any] = []
    client.on_message = lambda _c, _u, message: got.append(message)
    ours, theirs = socket.socketpair()
    client._sock = ours  # type: ignore[attr-defined]  (what connect() would set)
    stream = b"".join(publish_packet(f"fleet/v1/dev-{i % 1000:04d}/events", bytes(payload_bytes),
                                     i % 65535 + 1) for i in range(messages))
    writer = threading.Thread(target=theirs.sendall, args=(stream,), daemon=True)
    writer.start()
    start = time.thread_time()
    while len(got) < messages:
        client.loop_read(max_packets=100)
    spent = time.thread_time() - start
    writer.join()
    ours.close()
    theirs.close()
    return spent


def main() -> None:
    """Run the measurement and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 messages, 3 rounds")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--payload", type=int, default=160, help="bytes (a batch of 32 events)")
    args = parser.parse_args()
    messages = args.messages or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 5)
    best = {"paho": float("inf"), "speedup": float("inf")}
    for _ in range(rounds):
        paho_speedup.uninstall()
        best["paho"] = min(best["paho"], receive_seconds(messages, args.payload))
        if not paho_speedup.install():
            raise SystemExit("the paho speed-up is not available for this paho version")
        best["speedup"] = min(best["speedup"], receive_seconds(messages, args.payload))
    paho_speedup.uninstall()
    assert type(Properties(PacketTypes.PUBLISH)) is Properties
    paho_us = round(best["paho"] / messages * 1e6, 2)
    fast_us = round(best["speedup"] / messages * 1e6, 2)
    for metric, value in (("worker_receive_us_per_message_paho", paho_us),
                          ("worker_receive_us_per_message_speedup", fast_us)):
        print(json.dumps({"metric": metric, "value": value, "unit": "us", "baseline": paho_us,
                          "ratio": round(value / paho_us, 3)}))


if __name__ == "__main__":
    main()
