"""The wire bench's stream: realistic events and the messages a device makes of them.

The stream of the codec's tests (``testkit.traffic``: ~1 event/s with 100 ms jitter,
4-10 skewed classes, top-1 scores between 1/classes and 1, 5-50 ms latencies), cut into
batches and hourly summaries numbered by the SDK's ``SequenceCounter`` as a device numbers
them; the naive JSON baseline comes from the same module.
Imported by ``bench/wire.py`` (run as a script: ``bench/`` is on ``sys.path`` as its folder).
"""

from __future__ import annotations

from device_sdk.client.batching import SequenceCounter
from device_sdk.protocol.events import (
    Event,
    EventBatch,
    MessageKind,
    encode_summary,
    summarize,
)
from testkit import traffic

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def realistic_stream(count: int, seed: int, start_ms: int | None = None) -> list[Event]:
    """The codec tests' realistic stream (``testkit.traffic``), from the bench's T0."""
    return traffic.realistic_stream(count, seed, epoch_ms=T0, start_ms=start_ms)


def device_sequence() -> SequenceCounter:
    """Return the sequence of a device that booted at T0 with no sequence file (none kept)."""
    return SequenceCounter(None, clock=lambda: T0 / 1000)


def device_batches(stream: list[Event], size: int) -> list[EventBatch]:
    """Split ``stream`` into batches of ``size`` events, numbered as a device numbers them."""
    sequence = device_sequence()
    return [EventBatch.of(sequence.next(at_least=stream[start].t_ms), 17,
                          stream[start:start + size]) for start in range(0, len(stream), size)]


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
