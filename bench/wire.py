"""Measure telemetry bytes on the wire: event batches and summaries inside real MQTT 5 packets.

Every payload is published by paho (MQTT 5, QoS 1, topic ``fleet/v1/{uid}/events`` with a
20-character uid) to a minimal in-process listener that answers CONNACK and PUBACK and counts
the bytes of each PUBLISH packet exactly as paho wrote them (fixed header, topic, packet id,
property length, payload). Each count is also checked against the packet layout computed by
hand, so a change in paho's framing shows up as an error rather than a silent drift.

Figures (one JSON object per line at the end, bench/README convention):

- ``bytes_per_event_batch_N`` for N = 1, 8, 32, 128: packet bytes per event of CBOR batches;
  baseline: the same events as per-event JSON objects (ISO time, float score, the form
  tests/device_sdk/protocol/test_events.py calls naive) in the same framing; ratio =
  baseline / value (how many times smaller).
- ``summary_bytes_per_device_day``: a device at 1 inference/s sending one summary per hour
  instead of its events; baseline: the same day's events in batches of 32; ratio as above.

The stream is the realistic one of the codec's tests: ~1 event/s with 100 ms jitter, 4-10
skewed classes, top-1 scores between 1/classes and 1, 5-50 ms latencies.
Run: ``.venv/bin/python bench/wire.py [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sdk.protocol.events import (
    Event,
    EventBatch,
    encode_batch,
    encode_summary,
    summarize,
)

UID = "dev-0123456789abcdef"  # 20 characters, like a short hex serial
TOPIC = f"fleet/v1/{UID}/events"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def realistic_stream(count: int, seed: int, start_ms: int | None = None) -> list[Event]:
    """Return ~1 event/s with jitter, 4-10 skewed classes, varied scores, 5-50 ms latencies."""
    rng = random.Random(seed)
    classes = rng.randint(4, 10)
    weights = [rng.random() + 0.2 for _ in range(classes)]
    t_ms = start_ms if start_ms is not None else T0 + rng.randrange(10**9)
    events = []
    for index in range(count):
        t_ms += max(1, round(rng.gauss(1000, 100))) if index else 0
        label = rng.choices(range(classes), weights)[0]
        score = rng.randint(-(-256 // classes), 255)  # a top-1 softmax is at least 1/classes
        events.append(Event(t_ms, label, score, rng.randint(50, 500)))
    return events


def naive_json(batch: EventBatch) -> bytes:
    """Encode a batch as the JSON a device would send without this protocol."""
    return json.dumps([
        {
            "ts": datetime.datetime.fromtimestamp(e.t_ms / 1000, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "model": batch.model,
            "label": e.label,
            "score": round(e.score / 255, 4),
            "latency_ms": e.latency_100us / 10,
        }
        for e in batch.events
    ]).encode()


def _varint_len(value: int) -> int:
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4


def publish_packet_size(topic: str, payload_len: int, props_len: int = 0) -> int:
    """Return the size of an MQTT 5 QoS 1 PUBLISH, computed by hand from its layout."""
    # topic (length + bytes), packet id, property length + properties, payload
    remaining = 2 + len(topic.encode()) + 2 + _varint_len(props_len) + props_len + payload_len
    return 1 + _varint_len(remaining) + remaining


class CapturingListener:
    """Accept one MQTT 5 client; answer CONNACK and PUBACKs; record each PUBLISH's size."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sizes: list[int] = []
        self.acked = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            try:
                while True:
                    first = self._read(conn, 1)[0]
                    remaining, shift, header = 0, 0, 1
                    while True:
                        byte = self._read(conn, 1)[0]
                        header += 1
                        remaining |= (byte & 0x7F) << shift
                        shift += 7
                        if byte < 0x80:
                            break
                    body = self._read(conn, remaining)
                    kind = first >> 4
                    if kind == 1:  # CONNECT -> CONNACK (no session, success, no properties)
                        conn.sendall(b"\x20\x03\x00\x00\x00")
                    elif kind == 3:  # PUBLISH QoS 1 -> PUBACK with its packet id
                        topic_len = int.from_bytes(body[:2], "big")
                        packet_id = body[2 + topic_len:4 + topic_len]
                        self.sizes.append(header + remaining)
                        conn.sendall(b"\x40\x02" + packet_id)
                        self.acked.release()
                    elif kind == 14:  # DISCONNECT
                        return
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        """Stop listening."""
        self.server.close()


class Wire:
    """A paho client publishing to a capturing listener; returns the packet size of each send."""

    def __init__(self) -> None:
        self.listener = CapturingListener()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=UID,
                                  protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", self.listener.port)
        self.client.loop_start()

    def packet_size(self, payload: bytes, alias: int = 0, topic: str = TOPIC) -> int:
        """Publish ``payload`` at QoS 1; return the bytes paho put on the wire for it.

        With ``alias``, the packet carries a topic alias (3 bytes of properties); send the
        topic once with it, then ``topic=""`` (MQTT 5 topic aliases).
        """
        props = None
        if alias:
            props = Properties(PacketTypes.PUBLISH)
            props.TopicAlias = alias
        self.client.publish(topic, payload, qos=1, properties=props)
        if not self.listener.acked.acquire(timeout=5):
            raise RuntimeError("the listener saw no PUBLISH")
        size = self.listener.sizes[-1]
        expected = publish_packet_size(topic, len(payload), 3 if alias else 0)
        if size != expected:
            raise RuntimeError(f"paho wrote {size} bytes, the layout says {expected}")
        return size

    def close(self) -> None:
        """Disconnect and stop."""
        self.client.disconnect()
        self.client.loop_stop()
        self.listener.close()


def batch_figures(wire: Wire, size: int, seeds: int) -> dict[str, object]:
    """Return the bytes-per-event figure of batches of ``size`` events."""
    cbor_bytes = json_bytes = events = 0
    for seed in range(seeds):
        stream = realistic_stream(size * 4, seed)
        for start in range(0, len(stream), size):
            batch = EventBatch.of(seed * 10 + start // size + 1, 17, stream[start:start + size])
            cbor_bytes += wire.packet_size(encode_batch(batch))
            json_bytes += wire.packet_size(naive_json(batch))
            events += size
    value, baseline = cbor_bytes / events, json_bytes / events
    return {"metric": f"bytes_per_event_batch_{size}", "value": round(value, 2),
            "unit": "bytes/event", "baseline": round(baseline, 2),
            "ratio": round(baseline / value, 1)}


def summaries(day: list[Event], window_s: int, classes: int) -> list[bytes]:
    """Return a day of events as encoded summaries of ``window_s`` seconds each."""
    out = []
    for index, start in enumerate(range(T0, T0 + 86_400_000, window_s * 1000)):
        window = [e for e in day if start <= e.t_ms < start + window_s * 1000]
        labels = max([classes, *(e.label + 1 for e in window)])
        out.append(encode_summary(summarize(window, seq=index + 1, t0_ms=start, model=17,
                                            window_s=window_s, num_labels=labels)))
    return out


def summary_figures(wire: Wire, devices: int) -> dict[str, object]:
    """Return the bytes per device-day of hourly summaries at 1 inference/s.

    Also reports (on stderr) two ways under the budget: a topic alias, and 2-hour windows.
    """
    hourly = aliased = two_hourly = batch_bytes = 0
    for device in range(devices):
        classes = random.Random(1000 + device).randint(4, 10)  # what realistic_stream draws
        day = realistic_stream(86_400, 1000 + device, start_ms=T0)
        for index, payload in enumerate(summaries(day, 3600, classes)):
            hourly += wire.packet_size(payload)
            aliased += wire.packet_size(payload, alias=1, topic=TOPIC if index == 0 else "")
        two_hourly += sum(wire.packet_size(p) for p in summaries(day, 7200, classes))
        for start in range(0, len(day), 32):
            batch = EventBatch.of(start // 32 + 1, 17, day[start:start + 32])
            batch_bytes += publish_packet_size(TOPIC, len(encode_batch(batch)))
    print(f"[wire] summaries per device-day: hourly {hourly / devices:.0f} B, hourly with a "
          f"topic alias {aliased / devices:.0f} B, every 2 hours {two_hourly / devices:.0f} B",
          file=sys.stderr)
    value, baseline = hourly / devices, batch_bytes / devices
    return {"metric": "summary_bytes_per_device_day", "value": round(value),
            "unit": "bytes/day", "baseline": round(baseline),
            "ratio": round(baseline / value, 1)}


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams, same code path")
    args = parser.parse_args()
    seeds, devices = (5, 1) if args.quick else (20, 4)
    started = time.monotonic()
    wire = Wire()
    try:
        results = [batch_figures(wire, size, seeds) for size in (1, 8, 32, 128)]
        results.append(summary_figures(wire, devices))
    finally:
        wire.close()
    print(f"[wire] {time.monotonic() - started:.1f} s; every packet size matched the layout "
          f"({len(wire.listener.sizes)} PUBLISH packets)", file=sys.stderr)
    for item in results:
        print(json.dumps(item))


if __name__ == "__main__":
    main()
