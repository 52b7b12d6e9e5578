"""The device side of ``bench/soak.py``: devices publishing event batches on a fixed schedule,
flow-controlled end to end so that nothing is lost at the broker.

Why end to end: Mosquitto acknowledges a QoS 1 PUBLISH once it has queued the message for its
subscribers, and past a subscriber's queue limit (``max_queued_messages`` / ``_bytes``) it drops
further messages for that subscriber *after* acknowledging them: a device's window of
unacknowledged messages (``WINDOW``, as real devices have) bounds what the broker holds for the
device, never what it holds for a lagging worker (measured on Mosquitto 2.0.11: 60 publishes
to a worker session with 10 queued and 5 in flight, 60 PUBACKs with reason 0, 45 dropped, the
broker's log saying "Outgoing messages are being dropped"). An offered rate above what the
worker commits therefore turned into silent loss (the 3-minute run lost 11.9M events).

So the pipeline pushes back here: the orchestrator writes ``allow N`` lines on stdin, N being
this publisher's share of the batches committed so far plus a backlog allowance, and the
publisher never has more than N published. It sends on a fixed schedule (``messages_per_s``)
and never ahead of it; when the allowance holds it back it falls behind the schedule, and it
reports by how much (``deficit``) and for how long it was held (``held_s``): the signs that
the offered rate is above the sustained one.
"""

from __future__ import annotations

import json
import os
import selectors
import sys
import time
from pathlib import Path

from mqtt_raw import RawDevice, connect_device

PER_BATCH = 32
WINDOW = 50  # QoS 1 messages in flight per device, below the broker's maximum (100)
# Messages a device sends back to back when several are due (its outbox flushed at once): one
# socket write for them, and their PUBACKs mostly come back in one read. Each is its own QoS 1
# PUBLISH with its own seq, t0 and packet id.
BURST = 4


def cbor_int(value: int) -> bytes:
    """Encode an integer as a CBOR data item (RFC 8949 major types 0 and 1), as cbor2 does."""
    major, n = (0x00, value) if value >= 0 else (0x20, -1 - value)
    if n < 24:
        return bytes([major | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major | info]) + n.to_bytes(size, "big")
    raise ValueError(f"{value} does not fit 64 bits")


def batch_payloads() -> tuple[list[list[object]], int]:
    """The columns of a few template batches (each message gets its own seq and t0)."""
    import cbor2

    from device_sdk.protocol.events import Event, EventBatch, MessageKind, encode_batch

    t = 1_767_225_600_000
    templates = []
    for k in range(8):
        events = [Event(t + i * 997, (i * 7 + k) % 8, 90 + (i * 37 + k) % 160,
                        20 + (i * 131 + k * 17) % 2400) for i in range(PER_BATCH)]
        items = cbor2.loads(encode_batch(EventBatch.of(1, 0, events)))
        assert items[0] == MessageKind.BATCH2 and len(items) == 6
        templates.append(items[4:])
    return templates, int(MessageKind.BATCH2)


class Allowance:
    """The lines the orchestrator writes on stdin (``go``, then ``allow N``), read without
    blocking (all of stdin through here: a buffered reader could swallow the later lines)."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.limit = 0
        self.go = False
        self._buffer = b""
        self._selector = selector
        os.set_blocking(sys.stdin.fileno(), False)
        selector.register(sys.stdin.fileno(), selectors.EVENT_READ, self)

    def read(self) -> None:
        """Take the newest allowance off stdin."""
        data = os.read(sys.stdin.fileno(), 65_536)
        if not data:  # the orchestrator closed stdin: the allowance stays as it is
            self._selector.unregister(sys.stdin.fileno())
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.go = self.go or line == b"go"
            if line.startswith(b"allow "):
                self.limit = max(self.limit, int(line[6:]))


def run_publisher(spec_path: str) -> None:
    """Connect the devices, send a warm-up batch each, say ready; on 'go' publish on the
    schedule within the allowance and WINDOW per device, then wait for every PUBACK and print
    ``{"messages", "acked", "refused", "deficit", "held_s", "cpu_s"}`` (cpu_s: this process's
    CPU seconds from 'go' on)."""
    import cbor2

    spec = json.loads(Path(spec_path).read_text())
    templates, kind = batch_payloads()

    # The message is a CBOR array of six: kind, seq - t0, t0, 0 and a template's two columns,
    # whose encoding is made once; the three header numbers are encoded per message.
    head = b"\x86" + cbor_int(kind)
    tails = [b"\x00" + b"".join(cbor2.dumps(item) for item in t) for t in templates]

    def payload(seq: int, t0: int) -> bytes:
        return head + cbor_int(seq - t0) + cbor_int(t0) + tails[seq % len(tails)]

    for seq in (1, 7, 1 << 20):  # the same bytes as encoding the whole message
        assert payload(seq, 1_767_225_600_000) == cbor2.dumps(
            [kind, seq - 1_767_225_600_000, 1_767_225_600_000, 0,
             *templates[seq % len(templates)]])

    selector = selectors.DefaultSelector()
    devices: list[RawDevice] = []
    seqs: dict[str, int] = {}
    for uid, password in spec["devices"]:
        device = connect_device(spec["host"], spec["port"], uid, password)
        selector.register(device.sock, selectors.EVENT_READ, device)
        devices.append(device)
        seqs[uid] = 0
    counts = {"acked": 0, "refused": 0}

    def send(device: RawDevice, out: dict[int, list[bytes]]) -> None:
        seqs[device.uid] += 1
        packet = device.next_publish(payload(seqs[device.uid], int(time.time() * 1000)))
        out.setdefault(id(device), [device.sock]).append(packet)

    def flush(out: dict[int, list[object]]) -> None:
        for sock, *packets in out.values():
            sock.sendall(b"".join(packets))

    def read(timeout: float) -> None:
        for key, _ in selector.select(timeout=timeout):
            if isinstance(key.data, Allowance):
                key.data.read()
                continue
            acked, refused = key.data.read_pubacks()
            counts["acked"] += acked
            counts["refused"] += refused

    out: dict[int, list[object]] = {}
    for device in devices:  # warm-up
        send(device, out)
    flush(out)
    while counts["acked"] < len(devices):
        read(1.0)
    allowance = Allowance(selector)
    print("ready", flush=True)
    while not allowance.go:
        read(1.0)
    rate = spec["messages_per_s"]
    burst_max = spec.get("burst", BURST)
    cpu0 = time.process_time()
    started = time.monotonic()
    sent = turn = 0
    held_s = 0.0
    while (elapsed := time.monotonic() - started) < spec["seconds"]:
        due = min(int(elapsed * rate) - sent, allowance.limit - sent)
        out, tries = {}, 0
        while due > 0 and tries < len(devices):
            device = devices[turn % len(devices)]
            turn += 1
            burst = min(due, burst_max, WINDOW - device.inflight)
            if burst > 0:
                for _ in range(burst):
                    send(device, out)
                sent, due, tries = sent + burst, due - burst, 0
            else:
                tries += 1
        flush(out)
        t = time.monotonic()
        read(0.002)
        if sent >= allowance.limit and int(elapsed * rate) > sent:
            held_s += time.monotonic() - t  # the pipeline held us back
    deficit = max(0, int(spec["seconds"] * rate) - sent)
    total = sent + len(devices)
    deadline = time.monotonic() + 300
    while counts["acked"] < total and time.monotonic() < deadline:
        read(1.0)
    for device in devices:
        device.close()
    print(json.dumps({"messages": sent, "acked": counts["acked"] - len(devices),
                      "refused": counts["refused"], "deficit": deficit,
                      "held_s": round(held_s, 2), "cpu_s": time.process_time() - cpu0}),
          flush=True)
