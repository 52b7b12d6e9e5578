"""Measure telemetry bytes on the wire: event batches and summaries inside real MQTT 5 packets.

Every payload goes out through the device SDK's own link (``device_sdk.mqtt.link.Link``: paho, MQTT 5,
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
This file is the entry point and the figures; the packet layout computed by hand is in
``bench/wire_layout.py``, the capturing listener and the link publishing to it in
``bench/wire_capture.py``, the realistic stream and the messages made of it in
``bench/wire_stream.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict

from wire_capture import Wire  # bench/ is this script's folder
from wire_layout import ALIAS_MAXIMUM, ALIAS_PROPERTY, FRAMINGS, framed_size, read_varint
from wire_stream import T0, device_batches, realistic_stream, summaries

from device_sdk.protocol.events import MessageKind, encode_batch
from testkit.traffic import naive_json


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
                _, fields = read_varint(payload, at + 1)
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
