"""The wire bench's stream: realistic events and the messages a device makes of them.

The stream of the codec's tests (~1 event/s with 100 ms jitter, 4-10 skewed classes, top-1
scores between 1/classes and 1, 5-50 ms latencies), cut into batches and hourly summaries
numbered by the SDK's ``SequenceCounter`` as a device numbers them, and the naive JSON baseline.
Imported by ``bench/wire.py`` (run as a script: ``bench/`` is on ``sys.path`` as its folder).
"""

from __future__ import annotations

import datetime
import json
import random

from device_sdk.batching import SequenceCounter
from device_sdk.protocol.events import (
    Event,
    EventBatch,
    MessageKind,
    encode_summary,
    summarize,
)

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
