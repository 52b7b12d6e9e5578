"""The batcher closes batches by size and by age, numbers them from their first event's time
with a sequence that survives restarts, and in summary mode sends one summary per wall-clock
window."""

from __future__ import annotations

import threading
from pathlib import Path

import cbor2
import pytest

from device_sdk.client.batching import EventBatcher, Message, SequenceCounter
from device_sdk.protocol.events import (
    Event,
    EventBatch,
    MessageKind,
    Summary,
    decode_batch,
    decode_message,
    decode_summary,
)
from device_sdk.protocol.reasons import ProtocolError

T0 = 1_717_000_000_000  # a synced clock, in unix ms
BOOT_S = T0 / 1000 - 3600  # when the counters below start: an hour before the events


class Clock:
    """A settable clock for the batcher's age and window deadlines."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sink:
    """Collects what the batcher hands over, checking each payload decodes to the message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.payloads: list[bytes] = []

    def __call__(self, message: Message, payload: bytes) -> None:
        assert decode_message(payload) == message
        self.messages.append(message)
        self.payloads.append(payload)

    @property
    def seqs(self) -> list[int]:
        return [m.seq for m in self.messages]


def event(i: int, label: int = 1, t_ms: int | None = None) -> Event:
    return Event(T0 + 1000 * i if t_ms is None else t_ms, label, 100 + i % 100, 42)


@pytest.fixture
def sink() -> Sink:
    return Sink()


def counter() -> SequenceCounter:
    """Return a counter without a file, started an hour before the events of these tests."""
    return SequenceCounter(None, clock=lambda: BOOT_S)


def test_a_batch_closes_when_it_holds_max_events(sink: Sink) -> None:
    batcher = EventBatcher(sink, counter(), max_events=4)
    for i in range(10):
        batcher.add(event(i))
    assert [len(m.events) for m in sink.messages] == [4, 4]  # type: ignore[union-attr]
    assert batcher.pending_events == 2
    batcher.flush()
    assert [len(m.events) for m in sink.messages] == [4, 4, 2]  # type: ignore[union-attr]
    assert sink.seqs == [T0, T0 + 4000, T0 + 8000]  # each batch's first event's time
    assert [e for m in sink.messages for e in m.events] == [event(i) for i in range(10)]  # type: ignore[union-attr]


def test_a_batch_closes_when_its_first_event_is_max_age_old(sink: Sink) -> None:
    clock = Clock(100.0)
    batcher = EventBatcher(sink, counter(), max_events=32, max_age_s=30, monotonic=clock)
    assert batcher.poll() is None  # nothing open, nothing due
    batcher.add(event(0))
    clock.now = 110.0
    batcher.add(event(1))
    assert batcher.poll() == pytest.approx(20.0)  # measured from the first event
    clock.now = 129.9
    batcher.poll()
    assert sink.messages == []
    clock.now = 130.0
    assert batcher.poll() is None
    assert len(sink.messages) == 1 and len(sink.messages[0].events) == 2  # type: ignore[union-attr]


def test_flush_of_an_empty_batcher_sends_nothing(sink: Sink) -> None:
    batcher = EventBatcher(sink, counter())
    batcher.flush()
    assert sink.messages == []


def test_messages_carry_the_installed_package_id_and_a_switch_flushes_first(sink: Sink) -> None:
    batcher = EventBatcher(sink, counter(), model=0)
    batcher.add(event(0))
    batcher.set_model(17)
    batcher.add(event(1))
    batcher.flush()
    assert [m.model for m in sink.messages] == [0, 17]


def test_a_restart_never_reuses_a_sequence_number(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    first = SequenceCounter(path, block=8, clock=lambda: 1.0)
    used = [first.next() for _ in range(11)]
    assert used == list(range(1000, 1011))
    # Crash without any shutdown step: the next process continues above every number used.
    second = SequenceCounter(path, block=8, clock=lambda: 99.0)
    later = [second.next() for _ in range(3)]
    assert min(later) > max(used)
    assert later == sorted(later)


def test_the_reservation_is_written_once_per_block(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    counter = SequenceCounter(path, block=100, clock=lambda: 2.0)
    counter.next()
    assert path.read_text().strip() == "2100"
    mtime = path.stat().st_mtime_ns
    for _ in range(98):
        counter.next()
    assert path.stat().st_mtime_ns == mtime
    assert counter.next() == 2099
    counter.next()
    assert path.read_text().strip() == "2200"


def test_a_new_device_starts_counting_at_the_clock(tmp_path: Path) -> None:
    """A wiped device must not restart at 0, where the server would drop it as duplicates."""
    counter = SequenceCounter(tmp_path / "sequence", clock=lambda: 1_717_000_000.5)
    assert counter.next() == 1_717_000_000_500


def test_batches_are_numbered_from_their_first_events_time(sink: Sink) -> None:
    """seq = max(t0, previous seq + 1), as the firmware numbers them: a batch sends seq - t0 as
    one byte, 0, unless two batches start in the same millisecond or the clock stepped back."""
    batcher = EventBatcher(sink, counter(), max_events=2)
    for t_ms in (T0, T0, T0, T0 + 10, T0 + 500, T0 + 501, T0 - 60_000, T0 - 59_000):
        batcher.add(event(0, t_ms=t_ms))
    assert sink.seqs == [T0, T0 + 1, T0 + 500, T0 + 501]
    assert [m.t0_ms for m in sink.messages] == [T0, T0, T0 + 500, T0 - 60_000]
    offsets = [cbor2.loads(p)[1] for p in sink.payloads]
    assert offsets == [0, 1, 0, 60_501]
    assert {cbor2.loads(p)[0] for p in sink.payloads} == {MessageKind.BATCH2}


def test_the_counter_takes_the_larger_of_the_time_and_the_next_number() -> None:
    counter = SequenceCounter(None, clock=lambda: 5.0)
    assert counter.peek() == 5000
    assert [counter.next(at_least=t) for t in (T0, T0, T0 + 3, 0, T0 + 2)] == [
        T0, T0 + 1, T0 + 3, T0 + 4, T0 + 5]
    assert counter.next() == T0 + 6 and counter.peek() == T0 + 7


def test_time_numbered_sequences_reserve_a_block_of_milliseconds(tmp_path: Path) -> None:
    """Numbers jump with the clock: the file is rewritten only when one passes the reservation,
    and a restart (whatever its clock says) never reuses a number handed out before."""
    path = tmp_path / "sequence"
    first = SequenceCounter(path, block=60_000, clock=lambda: BOOT_S)
    used = [first.next(at_least=T0 + 30_000 * i) for i in range(5)]
    assert used == [T0, T0 + 30_000, T0 + 60_000, T0 + 90_000, T0 + 120_000]
    assert path.read_text().strip() == str(T0 + 180_000)  # written at T0, T0 + 60 s, T0 + 120 s
    # Restart with the clock stepped back a day: numbering resumes past every number used.
    second = SequenceCounter(path, block=60_000, clock=lambda: BOOT_S - 86_400)
    later = [second.next(at_least=T0 + 121_000 + 1000 * i) for i in range(3)]
    assert later == [T0 + 180_000, T0 + 180_001, T0 + 180_002]
    assert second.next(at_least=T0 + 200_000) == T0 + 200_000  # the clock caught up


def test_concurrent_callers_never_get_the_same_number(tmp_path: Path) -> None:
    counter = SequenceCounter(tmp_path / "sequence", block=7, durable=False, clock=lambda: BOOT_S)
    got: list[list[int]] = [[] for _ in range(4)]

    def take(mine: list[int], step: int) -> None:
        for i in range(300):
            mine.append(counter.next(at_least=T0 + step * i))

    threads = [threading.Thread(target=take, args=(got[k], k)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [n for mine in got for n in mine]
    assert len(set(every)) == len(every) == 1200
    assert all(mine == sorted(mine) for mine in got)
    assert int((tmp_path / "sequence").read_text()) > max(every)


def test_a_corrupt_sequence_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    path.write_text("twelve")
    with pytest.raises(ValueError, match="not a sequence reservation"):
        SequenceCounter(path)


def test_batches_of_a_restarted_batcher_continue_the_sequence(tmp_path: Path, sink: Sink) -> None:
    path = tmp_path / "sequence"
    one = EventBatcher(sink, SequenceCounter(path), max_events=2)
    for i in range(6):
        one.add(event(i))
    two = EventBatcher(sink, SequenceCounter(path), max_events=2)
    for i in range(6, 10):
        two.add(event(i))
    assert len(sink.seqs) == 5
    assert sink.seqs == sorted(set(sink.seqs))


def test_events_stepping_back_in_time_are_pinned_so_the_batch_encodes(sink: Sink) -> None:
    batcher = EventBatcher(sink, counter(), max_events=3)
    batcher.add(event(0, t_ms=T0 + 5000))
    batcher.add(event(1, t_ms=T0 + 4000))  # an NTP step backwards
    batcher.add(event(2, t_ms=T0 + 6000))
    batch = sink.messages[0]
    assert isinstance(batch, EventBatch)
    assert [e.t_ms for e in batch.events] == [T0 + 5000, T0 + 5000, T0 + 6000]


def test_a_gap_longer_than_a_delta_can_hold_starts_a_new_batch(sink: Sink) -> None:
    batcher = EventBatcher(sink, counter(), max_events=10)
    batcher.add(event(0))
    batcher.add(event(1, t_ms=T0 + 2 * 86_400_000))
    batcher.flush()
    assert [len(m.events) for m in sink.messages] == [1, 1]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad", [Event(1_000, 1, 1, 1), Event(T0, 1024, 1, 1), Event(T0, 1, 256, 1), Event(T0, 1, 1, -1)]
)
def test_an_event_the_wire_cannot_carry_is_refused_alone(sink: Sink, bad: Event) -> None:
    batcher = EventBatcher(sink, counter(), max_events=2)
    batcher.add(event(0))
    with pytest.raises(ProtocolError):
        batcher.add(bad)
    batcher.add(event(1))
    assert len(sink.messages) == 1 and len(sink.messages[0].events) == 2  # type: ignore[union-attr]


def test_summary_mode_sends_one_summary_per_aligned_window(sink: Sink) -> None:
    wall = Clock(T0 / 1000)
    batcher = EventBatcher(
        sink, counter(), summary_window_s=10, num_labels=4, wall=wall
    )
    start = T0 - T0 % 10_000  # windows are aligned to multiples of 10 s
    for offset, label in [(1000, 0), (2000, 2), (3000, 2), (9999, 1)]:
        batcher.add(Event(start + offset, label, 200, 30))
    assert sink.messages == []
    batcher.add(Event(start + 10_000, 3, 100, 50))  # first event of the next window
    first = sink.messages[0]
    assert isinstance(first, Summary)
    assert (first.t0_ms, first.window_s, first.counts) == (start, 10, [1, 1, 2, 0])
    assert first.mean_scores == [200, 200, 200, 0] and first.mean_latency_100us == 30
    wall.now = (start + 19_000) / 1000
    assert batcher.poll() == pytest.approx(1.0)
    wall.now = (start + 20_000) / 1000
    batcher.poll()
    second = decode_summary(_payload_of(sink.messages[1]))
    assert (second.t0_ms, second.counts, second.total) == (start + 10_000, [0, 0, 0, 1], 1)
    assert sink.seqs == [start, start + 10_000]  # numbered from the windows' starts


def test_concurrent_producers_get_every_event_in_sequence_order() -> None:
    """The sink sees messages in seq order even with several recording threads."""
    seen: list[int] = []
    total = [0]

    def sink(message: Message, payload: bytes) -> None:
        seen.append(decode_batch(payload).seq)
        total[0] += len(message.events)  # type: ignore[union-attr]

    batcher = EventBatcher(sink, counter(), max_events=7)

    def produce() -> None:
        for i in range(500):
            batcher.add(event(i % 50))

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.flush()
    assert total[0] == 2000
    assert seen == sorted(seen) and len(seen) == len(set(seen))


def _payload_of(message: Message) -> bytes:
    from device_sdk.protocol.events import encode_summary

    assert isinstance(message, Summary)
    return encode_summary(message)
