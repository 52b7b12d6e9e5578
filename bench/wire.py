"""Measure telemetry bytes on the wire: event batches and summaries inside real MQTT 5 packets.

Every payload goes out through the device SDK's own link (``device_sdk.link.Link``: paho, MQTT 5,
QoS 1, topic ``fleet/v1/{uid}/events`` with a 20-character uid, topic aliases as the device
client asks for them) to a minimal in-process listener that answers CONNACK, PUBACK and PINGRESP
and records each PUBLISH packet exactly as paho wrote it (fixed header, topic, packet id,
properties, payload). The listener resolves topic aliases per connection as a broker would and
refuses an alias it was never told about. Each packet is also checked against the layout
computed by hand (topic field, alias property, sizes), so a change in paho's or the link's
framing shows up as an error rather than a silent drift.

Three framings, each measured, each against a baseline in the same framing:

- aliased (the headline figures): the listener announces a Topic Alias Maximum in its CONNACK,
  as Mosquitto does (10 by default), and the connection has already named its topic: the
  packet carries an empty topic and a 3-byte Topic Alias property. Steady state of a device.
- ``..._first_packet``: the first packet of a connection, which names the topic and sets up the
  alias (the link reconnects before every packet).
- ``..._no_alias``: a broker that announces no aliases: the full topic in every packet.

Figures (one JSON object per line at the end, bench/README convention):

- ``bytes_per_event_batch_N`` for N = 1, 8, 32, 128: packet bytes per event of CBOR batches;
  baseline: the same events as per-event JSON objects (ISO time, float score, the form
  tests/device_sdk/protocol/test_events.py calls naive) in the same framing, through the same
  link on the same connection; ratio = baseline / value (how many times smaller).
- ``summary_bytes_per_device_day``: a device at 1 inference/s sending one summary per hour
  instead of its events, on one connection that day (the first summary names the topic);
  baseline: the same day's events in batches of 32 in the same framing; ratio as above.
  ``..._first_packet``: a device that connects once per summary; ``..._no_alias``: as above.

On stderr: where the bytes of a 32-event batch go (MQTT fields, CBOR header items, columns),
and what the same batches cost in kind 0, the form older devices send; the hourly summaries'
day also in kind 1, the summary form older devices send, and in 2-hour windows.

The stream is the realistic one of the codec's tests: ~1 event/s with 100 ms jitter, 4-10
skewed classes, top-1 scores between 1/classes and 1, 5-50 ms latencies. Every message is
numbered as a device numbers it, by the SDK's ``SequenceCounter``: from its first event's time
(a summary: its window's start), ``seq = max(t0, previous seq + 1)``, a unix-ms number. A batch
(kind 2) and a summary (kind 3) carry it as ``seq - t0``, one byte; kinds 0 and 1, which older
devices send, carry the whole number, nine.
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
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_sdk.backoff import Backoff
from device_sdk.batching import SequenceCounter
from device_sdk.link import Link
from device_sdk.link_config import BrokerEndpoint, LinkConfig
from device_sdk.protocol.events import (
    Event,
    EventBatch,
    MessageKind,
    encode_batch,
    encode_summary,
    summarize,
)
from device_sdk.reactor import Reactor

UID = "dev-0123456789abcdef"  # 20 characters, like a short hex serial
TOPIC = f"fleet/v1/{UID}/events"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ALIAS_MAXIMUM = 10  # what the listener announces: Mosquitto 2's default max_topic_alias
ALIAS_PROPERTY = 3  # Topic Alias property: identifier 0x23 and a two-byte value
TIMEOUT_S = 5.0


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


def device_sequence() -> SequenceCounter:
    """Return the sequence of a device that booted at T0 with no sequence file (none kept)."""
    return SequenceCounter(None, clock=lambda: T0 / 1000)


def device_batches(stream: list[Event], size: int) -> list[EventBatch]:
    """Split ``stream`` into batches of ``size`` events, numbered as a device numbers them."""
    sequence = device_sequence()
    return [EventBatch.of(sequence.next(at_least=stream[start].t_ms), 17,
                          stream[start:start + size]) for start in range(0, len(stream), size)]


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


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def publish_packet_size(topic: str, payload_len: int, props_len: int = 0) -> int:
    """Return the size of an MQTT 5 QoS 1 PUBLISH, computed by hand from its layout."""
    # topic (length + bytes), packet id, property length + properties, payload
    remaining = 2 + len(topic.encode()) + 2 + _varint_len(props_len) + props_len + payload_len
    return 1 + _varint_len(remaining) + remaining


def framed_size(framing: str, payload_len: int, first: bool) -> int:
    """Return the layout size of a packet in ``framing`` (the first of its connection or not)."""
    if framing == "no_alias":
        return publish_packet_size(TOPIC, payload_len)
    named = first or framing == "first_packet"
    return publish_packet_size(TOPIC if named else "", payload_len, ALIAS_PROPERTY)


@dataclass(frozen=True)
class Captured:
    """One PUBLISH as the listener received it."""

    size: int  # bytes on the wire, fixed header included
    topic: str  # the topic field: "" when an alias stands for it
    alias: int  # 0: no Topic Alias property
    resolved: str  # the topic the alias stands for


class CapturingListener:
    """Accept MQTT 5 clients; answer CONNACK, PUBACK and PINGRESP; record each PUBLISH.

    The CONNACK announces ``alias_maximum`` topic aliases (none when 0). Aliases are resolved
    per connection, as a broker does; a publish relying on an alias its connection never set
    up, or beyond the maximum, is a protocol error: the listener notes it and hangs up.
    """

    def __init__(self, alias_maximum: int) -> None:
        self.alias_maximum = alias_maximum
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.captured: list[Captured] = []
        self.errors: list[str] = []
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def _connack(self) -> bytes:
        # flags 0 (no session), reason 0 (success), then the properties
        props = bytes([0x22]) + self.alias_maximum.to_bytes(2, "big") if self.alias_maximum else b""
        body = b"\x00\x00" + bytes([len(props)]) + props
        return bytes([0x20, len(body)]) + body

    def _publish(self, body: bytes, size: int, aliases: dict[int, str]) -> bytes | None:
        """Record a QoS 1 PUBLISH; return its packet id, or None for a protocol error."""
        topic_len = int.from_bytes(body[:2], "big")
        topic = body[2:2 + topic_len].decode()
        at = 2 + topic_len
        packet_id = body[at:at + 2]
        props_len, at = _read_varint(body, at + 2)
        props, alias = body[at:at + props_len], 0
        if props:  # the link sets no property but the alias
            if props[0] != 0x23 or props_len != ALIAS_PROPERTY:
                self.errors.append(f"unexpected PUBLISH properties {props.hex()}")
                return None
            alias = int.from_bytes(props[1:3], "big")
            if not 1 <= alias <= self.alias_maximum:
                self.errors.append(f"topic alias {alias} beyond the maximum {self.alias_maximum}")
                return None
            if topic:
                aliases[alias] = topic
        resolved = topic or aliases.get(alias, "")
        if not resolved:
            self.errors.append(f"empty topic with alias {alias}, never set up on this connection")
            return None
        self.captured.append(Captured(size, topic, alias, resolved))
        return packet_id

    def _serve(self, conn: socket.socket) -> None:
        aliases: dict[int, str] = {}  # per connection, like the broker's
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
                    if kind == 1:  # CONNECT
                        conn.sendall(self._connack())
                    elif kind == 3:  # PUBLISH, QoS 1 -> PUBACK with its packet id
                        packet_id = self._publish(body, header + remaining, aliases)
                        if packet_id is None:
                            return
                        conn.sendall(b"\x40\x02" + packet_id)
                    elif kind == 12:  # PINGREQ
                        conn.sendall(b"\xd0\x00")
                    elif kind == 14:  # DISCONNECT
                        return
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        """Stop listening."""
        self.server.close()


class Wire:
    """The device SDK's link publishing to a capturing listener, one packet at a time.

    Implements the link's listener interface: ``link_up``, ``link_published``, ...
    """

    def __init__(self, alias_maximum: int) -> None:
        self.listener = CapturingListener(alias_maximum)
        self.reactor = Reactor("wire-bench")
        self.reactor.start()
        config = LinkConfig(BrokerEndpoint("127.0.0.1", self.listener.port, tls=False),
                            client_id=UID, log_transitions=False)
        # Reconnect at once: the first-packet figures reconnect before every packet.
        backoff = Backoff(initial=0.001, maximum=0.001, multiplier=1.0, jitter=0.0)
        self.link = Link(config, self.reactor, self, backoff=backoff)
        self._up = threading.Event()
        self._acked = threading.Semaphore(0)
        self._fresh = True  # no publish on this connection yet
        self.link.start()
        self._wait_up()
        if self.link.topic_alias_maximum != alias_maximum:
            raise RuntimeError(f"the link took {self.link.topic_alias_maximum} aliases from a "
                               f"CONNACK announcing {alias_maximum}")

    # -- LinkListener (reactor thread) ---------------------------------------------------

    def link_up(self, session_present: bool) -> None:
        self._up.set()

    def link_down(self, reason: str) -> None:
        pass

    def link_message(self, topic: str, payload: bytes) -> None:
        pass

    def link_published(self, mid: int, reason_code: int) -> None:
        self._acked.release()

    def link_refused(self, reason_code: int) -> None:
        pass

    # -- measuring ------------------------------------------------------------------------

    def _wait_up(self) -> None:
        if not self._up.wait(TIMEOUT_S):
            raise RuntimeError(f"the link did not connect: {self.link.last_error}")

    def reconnect(self) -> None:
        """Drop the connection and wait for the next one: its alias map starts empty."""
        self._up.clear()
        self.link.abort()
        self._wait_up()
        self._fresh = True

    def packet_size(self, payload: bytes, framing: str, *, warm_up: bool = True) -> int:
        """Publish ``payload`` at QoS 1 as the device client does; return its packet's bytes.

        ``framing`` is one of :data:`FRAMINGS` (see the module doc). For "aliased", a
        connection that has not named the topic yet does so first with an empty publish, not
        counted; with ``warm_up=False`` this packet names it instead (and is counted so).
        """
        if framing == "first_packet":
            self.reconnect()
        elif framing == "aliased" and self._fresh and warm_up:
            self._send(b"", framing)
        return self._send(payload, framing)

    def _send(self, payload: bytes, framing: str) -> int:
        """Publish, wait for the PUBACK, check the packet against the layout; return its size."""
        first, self._fresh = self._fresh, False
        before = len(self.listener.captured)
        self.reactor.call_soon(self._publish, payload)
        if not self._acked.acquire(timeout=TIMEOUT_S) or len(self.listener.captured) != before + 1:
            raise RuntimeError(f"no PUBACK for the publish: {self.listener.errors}")
        packet = self.listener.captured[-1]
        expected = framed_size(framing, len(payload), first)
        named = framing != "aliased" or first
        layout = (TOPIC if named else "", 0 if framing == "no_alias" else 1, TOPIC)
        if (packet.topic, packet.alias, packet.resolved) != layout or packet.size != expected:
            raise RuntimeError(f"paho wrote {packet}, the layout says {layout}, {expected} bytes")
        return packet.size

    def _publish(self, payload: bytes) -> None:
        if self.link.publish(TOPIC, payload, qos=1, alias=True) is None:
            raise RuntimeError("the link refused the publish")

    def close(self) -> None:
        """Disconnect and stop."""
        self.link.stop()
        self.link.stopped.wait(TIMEOUT_S)
        self.reactor.stop()
        self.reactor.close()
        self.listener.close()


FRAMINGS = ("aliased", "first_packet", "no_alias")


def _metric(name: str, framing: str) -> str:
    return name if framing == "aliased" else f"{name}_{framing}"


def batch_figures(wires: dict[str, Wire], size: int, seeds: int) -> list[dict[str, object]]:
    """Return the bytes-per-event figures of batches of ``size`` events, one per framing."""
    cbor_bytes: dict[str, int] = defaultdict(int)
    json_bytes: dict[str, int] = defaultdict(int)
    events = 0
    for seed in range(seeds):
        for batch in device_batches(realistic_stream(size * 4, seed), size):
            cbor, naive = encode_batch(batch), naive_json(batch)
            for framing in FRAMINGS:
                wire = wires["no_alias" if framing == "no_alias" else "aliased"]
                cbor_bytes[framing] += wire.packet_size(cbor, framing)
                json_bytes[framing] += wire.packet_size(naive, framing)
            events += size
    figures = []
    for framing in FRAMINGS:
        value, baseline = cbor_bytes[framing] / events, json_bytes[framing] / events
        figures.append({"metric": _metric(f"bytes_per_event_batch_{size}", framing),
                        "value": round(value, 2), "unit": "bytes/event",
                        "baseline": round(baseline, 2), "ratio": round(baseline / value, 1)})
    return figures


def summaries(
    day: list[Event], window_s: int, classes: int, kind: MessageKind = MessageKind.SUMMARY2
) -> list[bytes]:
    """Return a day of events as encoded summaries of ``window_s`` seconds each."""
    out = []
    sequence = device_sequence()
    for start in range(T0, T0 + 86_400_000, window_s * 1000):
        window = [e for e in day if start <= e.t_ms < start + window_s * 1000]
        labels = max([classes, *(e.label + 1 for e in window)])
        seq = sequence.next(at_least=start)
        out.append(encode_summary(summarize(window, seq=seq, t0_ms=start, model=17,
                                            window_s=window_s, num_labels=labels), kind=kind))
    return out


def summary_figures(wires: dict[str, Wire], devices: int) -> list[dict[str, object]]:
    """Return the bytes per device-day of hourly summaries at 1 inference/s, one per framing.

    The baseline (the day's events in batches of 32) is computed from the packet layout that
    every measured packet was checked against, in the same framing: one connection that day,
    whose first packet names the topic. Also reports (on stderr) the hourly summaries in kind 1
    (the whole seq, as older devices send them) and 2-hour windows.
    """
    value: dict[str, int] = defaultdict(int)
    baseline: dict[str, int] = defaultdict(int)
    two_hourly = older = 0
    for device in range(devices):
        classes = random.Random(1000 + device).randint(4, 10)  # what realistic_stream draws
        day = realistic_stream(86_400, 1000 + device, start_ms=T0)
        hourly = summaries(day, 3600, classes)
        for framing in FRAMINGS:
            wire = wires["no_alias" if framing == "no_alias" else "aliased"]
            if framing == "aliased":
                wire.reconnect()  # a new day, a new connection: the first summary names the topic
            value[framing] += sum(wire.packet_size(p, framing, warm_up=False) for p in hourly)
        wires["aliased"].reconnect()
        two_hourly += sum(wires["aliased"].packet_size(p, "aliased", warm_up=False)
                          for p in summaries(day, 7200, classes))
        wires["aliased"].reconnect()
        older += sum(wires["aliased"].packet_size(p, "aliased", warm_up=False)
                     for p in summaries(day, 3600, classes, MessageKind.SUMMARY))
        for index, batch in enumerate(device_batches(day, 32)):
            length = len(encode_batch(batch))
            for framing in FRAMINGS:
                baseline[framing] += framed_size(framing, length, first=index == 0)
    print(f"[wire] summaries per device-day, aliased: hourly {value['aliased'] / devices:.0f} B"
          f" (kind 3; in kind 1, the whole seq: {older / devices:.0f} B),"
          f" every 2 hours {two_hourly / devices:.0f} B", file=sys.stderr)
    return [{"metric": _metric("summary_bytes_per_device_day", framing),
             "value": round(value[framing] / devices), "unit": "bytes/day",
             "baseline": round(baseline[framing] / devices),
             "ratio": round(baseline[framing] / value[framing], 1)} for framing in FRAMINGS]


def _cbor_head(data: bytes, at: int) -> tuple[int, int, int]:
    """Return (major type, argument, head length) of the CBOR data item at ``at``."""
    info = data[at] & 0x1F
    extra = {24: 1, 25: 2, 26: 4, 27: 8}.get(info, 0)
    argument = int.from_bytes(data[at + 1:at + 1 + extra], "big") if extra else info
    return data[at] >> 5, argument, 1 + extra


def batch_anatomy(size: int, seeds: int) -> None:
    """Print where the bytes of an aliased ``size``-event batch packet go, per event (stderr).

    Then what the same batches cost in kind 0, the form older devices send (the full seq and a
    byte string per column).
    """
    parts: dict[str, float] = defaultdict(float)
    names = ("kind", "seq_minus_t0", "t0", "model", "n")
    columns = ("deltas", "labels", "scores", "latencies")
    widths: dict[str, int] = defaultdict(int)
    packets = older = 0
    for seed in range(seeds):
        for batch in device_batches(realistic_stream(size * 4, seed), size):
            payload = encode_batch(batch)
            older += framed_size("aliased", len(encode_batch(batch, kind=MessageKind.BATCH)),
                                 first=False)
            packets += 1
            total = framed_size("aliased", len(payload), first=False)
            parts["MQTT fixed header + remaining length"] += total - len(payload) - 2 - 2 - 4
            parts["MQTT topic field (empty) + packet id"] += 4
            parts["MQTT properties (length + alias)"] += 1 + ALIAS_PROPERTY
            _, _, head = _cbor_head(payload, 0)
            parts["CBOR array head"] += head
            at = head
            for name in names:
                _, _, head = _cbor_head(payload, at)
                parts[f"CBOR {name}"] += head
                at += head
            _, length, head = _cbor_head(payload, at)
            parts["CBOR columns: bstr head"] += head
            at += head
            end = at + length
            for name in columns:
                values = size - 1 if name == "deltas" else size
                width = payload[at]
                _, fields = _read_varint(payload, at + 1)
                parts[f"{name}: width + minimum"] += fields - at
                parts[f"{name}: packed fields"] += (values * width + 7) // 8
                widths[name] += width
                at = fields + (values * width + 7) // 8
            if at != end or end != len(payload):
                raise RuntimeError(f"the anatomy of a batch misread {len(payload) - at} bytes")
    per_event = size * packets
    print(f"[wire] anatomy of an aliased {size}-event batch packet (kind 2), bytes per event "
          f"(bit widths averaged over {packets} batches):", file=sys.stderr)
    for part, total in parts.items():
        column = next((c for c in columns if part.startswith(c + ": packed")), None)
        note = f"  (width {widths[column] / packets:.1f} bits)" if column else ""
        print(f"[wire]   {part:<44} {total / per_event:6.3f}{note}", file=sys.stderr)
    print(f"[wire]   {'total':<44} {sum(parts.values()) / per_event:6.3f}", file=sys.stderr)
    print(f"[wire]   the same batches in kind 0 (older devices): {older / per_event:.3f}",
          file=sys.stderr)


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams, same code path")
    args = parser.parse_args()
    seeds, devices = (5, 1) if args.quick else (20, 4)
    started = time.monotonic()
    wires = {"aliased": Wire(ALIAS_MAXIMUM), "no_alias": Wire(0)}
    try:
        results = [f for size in (1, 8, 32, 128) for f in batch_figures(wires, size, seeds)]
        results += summary_figures(wires, devices)
    finally:
        for wire in wires.values():
            wire.close()
    batch_anatomy(32, seeds)
    packets = sum(len(w.listener.captured) for w in wires.values())
    connections = sum(w.listener.connections for w in wires.values())
    errors = [e for w in wires.values() for e in w.listener.errors]
    if errors:
        raise RuntimeError(f"the listener saw protocol errors: {errors}")
    print(f"[wire] {time.monotonic() - started:.1f} s; every packet matched the layout "
          f"({packets} PUBLISH packets on {connections} connections)", file=sys.stderr)
    for item in results:
        print(json.dumps(item))


if __name__ == "__main__":
    main()
