"""Simulated device traffic for ingest tests: known event streams, sent through the real broker
by plain paho clients with a device-like outbox, and the tallies the server must end up with.

Every figure the tests compare against is computed here from what was sent, independently of
the server's ingest code (no shared helpers beyond the wire codec that encodes the payloads).
"""

from __future__ import annotations

import datetime
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from device_sdk.mqtt import BrokerEndpoint, connect, new_client
from device_sdk.protocol.events import Event, EventBatch, Summary, encode_batch, encode_summary

Message = EventBatch | Summary
EventRow = tuple[int, int, int, int, int, int]  # device id, seq, t_ms, label, score, latency
RollupKey = tuple[int, int, int, int]  # device id, model version id, minute (s), label
# PUBACK reason 16: the broker took the message but no subscription matched, so no worker has
# it. Mosquitto 2.0 does not persist shared subscriptions: right after a broker restart, until
# the workers have subscribed again, every event batch gets this answer.
NO_MATCHING_SUBSCRIBERS = 0x10
UNROUTED_RETRY_S = 0.5


def make_stream(uid: str, *, batches: int, per_batch: int, package: int, start_ms: int,
                seed: int, labels: int = 6, first_seq: int = 1) -> list[EventBatch]:
    """Return ``batches`` consecutive event batches of one device, about one event a second."""
    rng = random.Random(f"{uid}/{seed}")
    weights = [rng.uniform(0.2, 1.0) for _ in range(labels)]
    t = start_ms + rng.randrange(1000)
    out = []
    for seq in range(first_seq, first_seq + batches):
        events = []
        for _ in range(per_batch):
            label = rng.choices(range(labels), weights)[0]
            events.append(Event(t, label, rng.randrange(90, 256), rng.randrange(20, 2500)))
            t += rng.randrange(600, 1400)
        out.append(EventBatch.of(seq, package, events))
    return out


@dataclass
class Ledger:
    """What was sent, per device: the messages and the server-side ids they must map to."""

    device_ids: dict[str, int]  # uid -> Device.id
    model_versions: dict[int, int] = field(default_factory=dict)  # package id -> version id
    sent: dict[tuple[str, int], Message] = field(default_factory=dict)

    def add(self, uid: str, messages: Iterable[Message]) -> None:
        """Record messages a device will send (a repeated seq must repeat the same message)."""
        for m in messages:
            assert self.sent.setdefault((uid, m.seq), m) == m, f"{uid} reuses seq {m.seq}"

    def _batches(self) -> Iterable[tuple[int, int, EventBatch]]:
        for (uid, _), m in self.sent.items():
            if isinstance(m, EventBatch):
                yield self.device_ids[uid], self.model_versions.get(m.model, 0), m

    def event_rows(self) -> Counter[EventRow]:
        """Return the raw event rows the server must hold, as a multiset."""
        return Counter((d, m.seq, e.t_ms, e.label, e.score, e.latency_100us)
                       for d, _, m in self._batches() for e in m.events)

    def batch_keys(self) -> dict[tuple[int, int], int]:
        """Return (device id, seq) -> event count of every message sent."""
        return {(self.device_ids[uid], seq): len(m.events) if isinstance(m, EventBatch)
                else sum(m.counts) for (uid, seq), m in self.sent.items()}

    def rollups(self) -> dict[RollupKey, tuple[int, int, int]]:
        """Return (count, score sum, latency sum) per device, version, minute and label."""
        sums: dict[RollupKey, list[int]] = defaultdict(lambda: [0, 0, 0])
        for d, mv, m in self._batches():
            for e in m.events:
                acc = sums[(d, mv, e.t_ms // 60_000 * 60, e.label)]
                acc[0] += 1
                acc[1] += e.score
                acc[2] += e.latency_100us
        for (uid, _), s in self.sent.items():
            if isinstance(s, Summary):
                mv = self.model_versions.get(s.model, 0)
                for label, n in enumerate(s.counts):
                    if n:  # a summary counts in its window's first minute, at its means
                        acc = sums[(self.device_ids[uid], mv, s.t0_ms // 60_000 * 60, label)]
                        acc[0] += n
                        acc[1] += s.mean_scores[label] * n
                        acc[2] += s.mean_latency_100us * n
        return {k: (v[0], v[1], v[2]) for k, v in sums.items()}

    @property
    def total_events(self) -> int:
        """Return how many events the sent messages hold."""
        return sum(self.batch_keys().values())


def payload_of(message: Message) -> bytes:
    """Return a message as the device puts it on the wire."""
    return encode_batch(message) if isinstance(message, EventBatch) else encode_summary(message)


@dataclass
class _Pending:
    payload: bytes
    sent_at: float
    mids: set[int] = field(default_factory=set)


class DeviceLink:
    """One device's MQTT connection (client id = username = uid) and its outbox.

    Like a real device, it keeps each message until the broker's PUBACK and publishes it again
    (same payload, so the same seq) when none came within ``resend_after_s``: across a broker
    restart or a lost acknowledgement the server may see a message twice, never zero times.
    With ``retry_unrouted`` a PUBACK saying no subscriber matched (reason 16) does not count as
    delivered either: the message is sent again after ``UNROUTED_RETRY_S``.
    """

    def __init__(self, uid: str, password: str, host: str, port: int, *, window: int = 4,
                 resend_after_s: float = 4.0, retry_unrouted: bool = True) -> None:
        self.uid = uid
        self.topic = f"fleet/v1/{uid}/events"
        self.window = window
        self.resend_after_s = resend_after_s
        self.outbox: list[tuple[int, bytes]] = []  # (seq, payload), next first
        self.pending: dict[int, _Pending] = {}  # seq -> in flight
        self.mid_seq: dict[int, int] = {}
        self.retry_unrouted = retry_unrouted
        self.unrouted = 0
        self.acked: list[tuple[int, int]] = []  # (mid, reason code), from paho's thread
        self.refused: list[tuple[int, int]] = []  # (seq, reason code)
        self.publishes = self.resends = 0
        self.history: dict[int, list[tuple[float, str]]] = defaultdict(list)  # seq -> events
        self.lock = threading.Lock()
        self.endpoint = BrokerEndpoint(host, port, tls=False)
        self.client = new_client(self.endpoint, client_id=uid, username=uid, password=password,
                                 reconnect_delay=(1, 2))
        self.client.on_publish = self._on_publish
        self.host, self.port = host, port

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object,
                    properties: object) -> None:
        with self.lock:
            self.acked.append((mid, int(getattr(reason, "value", 0))))

    def connect(self) -> None:
        """Connect and start paho's network thread (it reconnects by itself)."""
        connect(self.client, self.endpoint, keepalive=20)

    def queue(self, messages: Iterable[Message]) -> None:
        """Add messages to the outbox."""
        self.outbox += [(m.seq, payload_of(m)) for m in messages]

    def _publish(self, seq: int, payload: bytes) -> None:
        info = self.client.publish(self.topic, payload, qos=1)
        with self.lock:
            self.mid_seq[info.mid] = seq
        self.pending.setdefault(seq, _Pending(payload, 0.0)).mids.add(info.mid)
        self.pending[seq].sent_at = time.monotonic()
        self.history[seq].append((time.monotonic(), f"pub mid {info.mid} rc {info.rc}"))
        self.publishes += 1

    def pump(self, budget: int, *, send_twice: int = 0) -> int:
        """Settle acknowledgements, resend late messages, send new ones; return how many sent.

        ``send_twice`` > 0 publishes every ``send_twice``-th message twice, as a device does
        when a PUBACK is lost on the way back.
        """
        with self.lock:
            acked, self.acked = self.acked, []
        now = time.monotonic()
        for mid, code in acked:
            seq = self.mid_seq.pop(mid, None)
            if seq is None or seq not in self.pending:
                continue
            self.history[seq].append((now, f"puback mid {mid} reason {code}"))
            if code == NO_MATCHING_SUBSCRIBERS and self.retry_unrouted:
                # Nobody took it (no worker subscribed yet): keep it, try again shortly.
                self.pending[seq].sent_at = now - self.resend_after_s + UNROUTED_RETRY_S
                self.unrouted += 1
                continue
            if code >= 0x80:
                self.refused.append((seq, code))
            self.pending.pop(seq)
        sent = 0
        for seq, p in list(self.pending.items()):
            if sent < budget and now - p.sent_at > self.resend_after_s:
                self._publish(seq, p.payload)
                self.resends += 1
                sent += 1
        while sent < budget and self.outbox and len(self.pending) < self.window:
            seq, payload = self.outbox.pop(0)
            self._publish(seq, payload)
            sent += 1
            if send_twice and seq % send_twice == 0:
                self._publish(seq, payload)
                self.resends += 1
        return sent

    @property
    def done(self) -> bool:
        """Return whether every message was acknowledged by the broker."""
        return not self.outbox and not self.pending

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


class FleetPublisher:
    """Drive many ``DeviceLink``s from one thread at a bounded message rate."""

    def __init__(self, links: list[DeviceLink], *, rate: float, send_twice: int = 0) -> None:
        self.links = links
        self.rate = rate
        self.send_twice = send_twice
        self.total = sum(len(link.outbox) for link in links)
        self.sent_new = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-publisher", daemon=True)

    def start(self) -> None:
        """Connect every device and start sending in the background."""
        for link in self.links:
            link.connect()
        self._thread.start()

    def _run(self) -> None:
        try:
            started = time.monotonic()
            while not self._stop.is_set() and not all(link.done for link in self.links):
                allowed = int((time.monotonic() - started) * self.rate) + 1
                for link in self.links:
                    before = len(link.outbox)
                    link.pump(max(0, min(8, allowed - self.sent_new)), send_twice=self.send_twice)
                    self.sent_new += before - len(link.outbox)
                time.sleep(0.005)
        except Exception as exc:  # noqa: BLE001 - surfaced by wait_progress() and wait()
            self.error = exc

    @property
    def progress(self) -> float:
        """Return the share of messages handed to paho at least once."""
        return self.sent_new / self.total if self.total else 1.0

    def wait_progress(self, share: float, timeout: float = 60.0) -> None:
        """Block until ``share`` of the messages were sent."""
        deadline = time.monotonic() + timeout
        while self.progress < share:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"stuck at {self.progress:.0%} sent"
            time.sleep(0.01)

    def wait(self, timeout: float = 120.0) -> None:
        """Block until every message was acknowledged by the broker."""
        self._thread.join(timeout)
        assert self.error is None, self.error
        assert not self._thread.is_alive(), (
            f"unacknowledged after {timeout:.0f} s: "
            f"{sum(len(link.pending) + len(link.outbox) for link in self.links)} messages")

    def close(self) -> None:
        """Stop sending and disconnect every device."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for link in self.links:
            link.close()

    @property
    def resends(self) -> int:
        """Return how many messages were published more than once."""
        return sum(link.resends for link in self.links)

    @property
    def unrouted(self) -> int:
        """Return how many PUBACKs said that no subscriber took the message."""
        return sum(link.unrouted for link in self.links)

    @property
    def refused(self) -> list[tuple[str, int, int]]:
        """Return (uid, seq, reason code) of every publish the broker refused."""
        return [(link.uid, seq, code) for link in self.links for seq, code in link.refused]


# -- a realistic stream and its JSON baseline (codec tests and bench/wire.py) ----------------


def realistic_stream(count: int, seed: int, *, epoch_ms: int,
                     start_ms: int | None = None) -> list[Event]:
    """Make ~1 event/s with jitter, 4-10 skewed classes, varied scores, 5-50 ms latencies.

    The first event is at ``start_ms``, or at a seeded time within ~11 days after ``epoch_ms``.
    """
    rng = random.Random(seed)
    classes = rng.randint(4, 10)
    weights = [rng.random() + 0.2 for _ in range(classes)]
    t_ms = start_ms if start_ms is not None else epoch_ms + rng.randrange(10**9)
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
