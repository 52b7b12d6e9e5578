"""Group inference events into the messages a device publishes: batches, or window summaries.

:class:`EventBatcher` collects :class:`~device_sdk.protocol.events.Event` objects and, in batch
mode, closes a batch when it holds ``max_events`` events or when its first event has waited
``max_age_s`` seconds, whichever comes first. In summary mode it instead counts the events of
each wall-clock window of ``summary_window_s`` seconds (aligned to multiples of the window, so
every device's windows line up) and emits one :class:`~device_sdk.protocol.events.Summary`
per window that saw at least one event.

Every message gets the next number of a :class:`SequenceCounter`, the server's dedupe key,
which is persisted so a restarted device never reuses one. As in the firmware, a message is
numbered from its first event's time (a summary: its window's start): ``seq = max(t0, previous
seq + 1)``, so ``seq`` is almost always ``t0``, and batches and summaries carry it as
``seq - t0 = 0``, one byte (``events.py``: kinds 2 and 3).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from device_sdk.protocol.events import (
    Event,
    EventBatch,
    Summary,
    encode_batch,
    encode_summary,
    summarize,
)
from device_sdk.protocol.limits import (
    MAX_DELTA_MS,
    MAX_EVENTS_BYTES,
    MAX_EVENTS_PER_BATCH,
    MAX_LABELS,
    MAX_LATENCY_100US,
    MAX_MODEL_ID,
    MAX_SCORE,
    MAX_T0_MS,
    MAX_UINT63,
    MAX_WINDOW_S,
    MIN_T0_MS,
    coerce_uint,
)

__all__ = ["EventBatcher", "Message", "SequenceCounter", "Sink"]

log = logging.getLogger(__name__)

Message = EventBatch | Summary
Sink = Callable[[Message, bytes], None]


class SequenceCounter:
    """Hand out increasing sequence numbers, numbered from time; never one handed out before.

    ``next(at_least)`` returns ``max(at_least, previous + 1)``. The batcher passes a message's
    ``t0`` in unix ms, the firmware's rule (``device.c``): numbers follow the clock while
    messages are further apart than 1 ms, and ``seq - t0``, which batches and summaries carry
    instead of ``seq``, is 0. Without ``at_least`` it counts up by one.

    The file holds a reservation, not the last number: before handing out ``n`` the counter
    makes sure the file says more than ``n``, reserving ``block`` numbers past ``n`` per write.
    After a restart numbering resumes at the reservation, so up to ``block - 1`` numbers are
    skipped; gaps are harmless (the server only dedupes on them). Since numbers follow the
    clock, ``block`` is also milliseconds: the default, a minute's worth, costs about one write a
    minute (not one per batch), and after a restart puts ``seq`` at most a minute ahead of
    ``t0`` (an offset of three bytes, not one) until the clock catches up. A counter without a file starts at the current
    unix time in milliseconds rather than 0, so a device whose state was wiped still counts
    above the numbers it used before (which the server would drop as duplicates). ``floor``
    (the outbox's persisted :attr:`~device_sdk.client.outbox.Outbox.seq_floor`) is a second
    line: numbering never starts below it, whatever the file or the clock say.
    Thread-safe.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        block: int = 60_000,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
        floor: int = 0,
    ) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self.path = Path(path) if path is not None else None
        self.block = block
        self.durable = durable
        self._lock = threading.Lock()
        stored = self._read()
        self._next = max(stored if stored is not None else int(clock() * 1000), floor)
        self._reserved = self._next  # numbers below this are covered by the file

    def next(self, at_least: int = 0) -> int:
        """Return ``max(at_least, previous + 1)``, persisting a new reservation first if needed.

        ``at_least`` is the time the message is numbered from (its ``t0``, unix ms).
        """
        with self._lock:
            value = max(self._next, at_least)
            if value >= MAX_UINT63:
                raise OverflowError("sequence numbers exhausted")
            if value >= self._reserved:
                self._reserved = min(value + self.block, MAX_UINT63)
                self._write(self._reserved)
            self._next = value + 1
            return value

    def peek(self) -> int:
        """Return the least number :meth:`next` can return now, without taking it."""
        with self._lock:
            return self._next

    def _read(self) -> int | None:
        if self.path is None or not self.path.exists():
            return None
        text = self.path.read_text().strip()
        try:
            return int(text)
        except ValueError:
            # A torn write cannot happen (write-then-rename); anything else is tampering or
            # corruption, and guessing a number could reuse one. Refuse loudly.
            raise ValueError(f"{self.path}: not a sequence reservation: {text[:40]!r}") from None

    def _write(self, value: int) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{value}\n")
            if self.durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        if self.durable:  # the rename itself must survive a power cut too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class EventBatcher:
    """Collect events and hand finished messages, encoded, to ``sink(message, payload)``.

    Call :meth:`add` for each event and :meth:`poll` now and then (it closes what is due and
    says when to call again); :meth:`flush` closes the current batch or window at once.
    Thread-safe: one lock covers everything, and ``sink`` is called with it held, so messages
    reach the sink in sequence order. ``sink`` should be quick (append to the outbox); if it
    raises, the message is lost and the error propagates to the caller of add/poll/flush.
    """

    def __init__(
        self,
        sink: Sink,
        sequence: SequenceCounter,
        *,
        model: int = 0,
        max_events: int = 32,
        max_age_s: float = 30.0,
        summary_window_s: int | None = None,
        num_labels: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= max_events <= MAX_EVENTS_PER_BATCH:
            raise ValueError(f"max_events must be within 1..{MAX_EVENTS_PER_BATCH}")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        if summary_window_s is not None and not 1 <= summary_window_s <= MAX_WINDOW_S:
            raise ValueError(f"summary_window_s must be within 1..{MAX_WINDOW_S}")
        self.sink = sink
        self.sequence = sequence
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.summary_window_s = summary_window_s
        self.num_labels = num_labels
        self._model = coerce_uint(model, "model", MAX_MODEL_ID)
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.RLock()
        self._events: list[Event] = []
        self._opened = 0.0  # monotonic time the current batch got its first event
        self._window_start_ms = 0  # summary mode: start of the current window

    @property
    def model(self) -> int:
        """Return the model id stamped on the messages (the installed package id, or 0)."""
        return self._model

    @property
    def pending_events(self) -> int:
        """Return how many events wait in the current batch or window."""
        return len(self._events)

    def add(self, event: Event) -> None:
        """Take one event; close the batch (or the previous window) when a bound is reached."""
        _check_event(event)
        with self._lock:
            if self.summary_window_s is None:
                self._add_to_batch(event)
            else:
                self._add_to_window(event)

    def poll(self) -> float | None:
        """Close the batch or window if its time is up; return seconds until the next deadline."""
        with self._lock:
            if not self._events:
                return None
            if self.summary_window_s is None:
                left = self._opened + self.max_age_s - self._monotonic()
            else:
                end_ms = self._window_start_ms + self.summary_window_s * 1000
                left = (end_ms - self._wall() * 1000) / 1000
            if left > 0:
                return left
            self._close()
            return None

    def flush(self) -> None:
        """Close the current batch or window now, if it holds any event."""
        with self._lock:
            if self._events:
                self._close()

    def set_model(self, model: int) -> None:
        """Stamp later messages with ``model``; events so far go out under the old one."""
        model = coerce_uint(model, "model", MAX_MODEL_ID)
        with self._lock:
            if model != self._model:
                self.flush()
                self._model = model

    # -- internals (lock held) ------------------------------------------------------------

    def _add_to_batch(self, event: Event) -> None:
        if self._events:
            last = self._events[-1].t_ms
            if event.t_ms - last > MAX_DELTA_MS:
                self._close()
            elif event.t_ms < last:
                # The wall clock stepped back (an NTP correction): keep the column monotonic,
                # which the delta encoding needs, by pinning the event to its predecessor.
                event = Event(last, event.label, event.score, event.latency_100us)
        if not self._events:
            self._opened = self._monotonic()
        self._events.append(event)
        if len(self._events) >= self.max_events:
            self._close()

    def _add_to_window(self, event: Event) -> None:
        assert self.summary_window_s is not None
        width = self.summary_window_s * 1000
        if self._events and event.t_ms >= self._window_start_ms + width:
            self._close()
        if not self._events:
            self._window_start_ms = event.t_ms - event.t_ms % width
        elif event.t_ms < self._window_start_ms:
            event = Event(self._window_start_ms, event.label, event.score, event.latency_100us)
        self._events.append(event)

    def _close(self) -> None:
        events, self._events = self._events, []
        message: Message
        if self.summary_window_s is None:
            seq = self.sequence.next(at_least=events[0].t_ms)
            message = EventBatch.of(seq, self._model, events)
            payload = encode_batch(message)
        else:
            seq = self.sequence.next(at_least=self._window_start_ms)
            message = summarize(
                events, seq=seq, t0_ms=self._window_start_ms, model=self._model,
                window_s=self.summary_window_s, num_labels=self.num_labels,
            )
            payload = encode_summary(message)
        # Cannot happen within MAX_EVENTS_PER_BATCH (at most ~65 bits per event); a guard
        # rather than a silent refusal by the server if the limits ever change.
        assert len(payload) <= MAX_EVENTS_BYTES, f"{len(payload)}-byte events message"
        self.sink(message, payload)


def _check_event(event: Event) -> None:
    """Refuse an event the encoder would refuse, before it can spoil a whole batch."""
    coerce_uint(event.t_ms, "t_ms", MAX_T0_MS, minimum=MIN_T0_MS)
    coerce_uint(event.label, "label", MAX_LABELS - 1)
    coerce_uint(event.score, "score", MAX_SCORE)
    coerce_uint(event.latency_100us, "latency", MAX_LATENCY_100US)
