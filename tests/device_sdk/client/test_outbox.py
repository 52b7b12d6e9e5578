"""The outbox keeps messages on disk until acknowledged: across restarts, within its bounds,
in order, and never hands one message out twice in one pass."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.client.outbox import Outbox


def drain(outbox: Outbox, *, window: int = 3) -> list[int]:
    """Send everything once, as the client does after a connect: return the seqs in order."""
    sent: list[int] = []
    cursor = 0
    while batch := outbox.pending(after_id=cursor, limit=window):
        for entry in batch:
            sent.append(entry.seq)
            cursor = entry.id
            outbox.ack(entry.id)
    return sent


def test_entries_come_out_in_the_order_they_went_in(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        for seq in (10, 11, 12, 13):
            outbox.put(seq, f"m{seq}".encode())
        entries = outbox.pending(limit=10)
        assert [e.seq for e in entries] == [10, 11, 12, 13]
        assert [e.payload for e in entries] == [b"m10", b"m11", b"m12", b"m13"]
        assert [e.id for e in entries] == sorted(e.id for e in entries)
        assert len(outbox) == 4 and outbox.size_bytes == 12


def test_ack_removes_exactly_one_entry(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        ids = [outbox.put(seq, b"x") for seq in range(3)]
        assert outbox.ack(ids[1]) is True
        assert outbox.ack(ids[1]) is False  # already gone: a duplicate PUBACK is harmless
        assert [e.seq for e in outbox.pending()] == [0, 2]


def test_a_restart_keeps_unacknowledged_messages_and_the_drop_count(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    outbox = Outbox(path, max_entries=3)
    ids = [outbox.put(seq, bytes([seq]) * 10) for seq in range(5)]  # 0 and 1 are dropped
    outbox.ack(ids[2])
    outbox.close()

    reopened = Outbox(path, max_entries=3)
    assert [(e.seq, e.payload) for e in reopened.pending()] == [(3, b"\3" * 10), (4, b"\4" * 10)]
    assert len(reopened) == 2 and reopened.size_bytes == 20
    assert reopened.dropped == 2
    # New entries go after the old ones, even though the newest old one was acknowledged.
    new_id = reopened.put(5, b"y")
    assert new_id > ids[-1]
    assert [e.seq for e in reopened.pending()] == [3, 4, 5]
    reopened.close()


def test_ids_never_go_backwards_after_the_queue_was_empty(tmp_path: Path) -> None:
    """A cursor from before a full drain must not skip entries put afterwards."""
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        last = outbox.put(1, b"a")
        outbox.ack(last)
    with Outbox(path) as outbox:
        assert outbox.put(2, b"b") > last


def test_full_by_count_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_entries=4) as outbox:
        for seq in range(10):
            outbox.put(seq, b"e")
        assert [e.seq for e in outbox.pending()] == [6, 7, 8, 9]
        assert outbox.dropped == 6
        assert len(outbox) == 4


def test_full_by_bytes_drops_as_many_as_needed(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=100) as outbox:
        for seq in range(4):
            outbox.put(seq, b"x" * 30)  # 120 bytes: the first must go
        assert [e.seq for e in outbox.pending()] == [1, 2, 3]
        outbox.put(4, b"y" * 70)  # needs 70: two more go
        assert [e.seq for e in outbox.pending()] == [3, 4]
        assert outbox.size_bytes == 100 and outbox.dropped == 3


def test_a_message_larger_than_the_whole_outbox_is_refused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=10) as outbox:
        outbox.put(1, b"keep")
        with pytest.raises(ValueError):
            outbox.put(2, b"x" * 11)
        assert [e.seq for e in outbox.pending()] == [1]  # nothing was dropped for it


def test_a_reconnect_resends_only_what_was_not_acknowledged(tmp_path: Path) -> None:
    """A pass sends each entry once; after a drop the next pass starts again from the oldest."""
    with Outbox(tmp_path / "o.db") as outbox:
        for seq in range(6):
            outbox.put(seq, b"e")
        first_pass = outbox.pending(after_id=0, limit=4)  # in flight when the link drops
        outbox.ack(first_pass[0].id)
        outbox.ack(first_pass[1].id)
        # Reconnected: 2 and 3 go again with their seq (the server dedupes), then 4 and 5.
        assert drain(outbox) == [2, 3, 4, 5]
        assert len(outbox) == 0


def test_concurrent_producers_and_a_consumer_lose_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", durable=False) as outbox:
        received: list[int] = []
        done = threading.Event()

        def produce(base: int) -> None:
            for i in range(200):
                outbox.put(base + i, b"p")

        def consume() -> None:
            cursor = 0
            while not (done.is_set() and len(outbox) == 0):
                for entry in outbox.pending(after_id=cursor, limit=16):
                    received.append(entry.seq)
                    cursor = entry.id
                    outbox.ack(entry.id)

        consumer = threading.Thread(target=consume)
        consumer.start()
        producers = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        done.set()
        consumer.join(10)
        assert sorted(received) == sorted(k * 1000 + i for k in range(4) for i in range(200))
        assert len(received) == len(set(received))


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 40)),
        st.tuples(st.just("ack_oldest"), st.just(0)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_behaves_like_a_bounded_fifo_across_restarts(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    """Any mix of puts, acks and restarts: the outbox equals a list model dropping the oldest."""
    path = tmp_path_factory.mktemp("fifo") / "o.db"
    limits = {"max_entries": 5, "max_bytes": 100, "durable": False}
    outbox = Outbox(path, **limits)  # type: ignore[arg-type]
    model: list[tuple[int, int]] = []  # (seq, size)
    dropped = 0
    seq = 0
    for op, size in ops:
        if op == "put":
            seq += 1
            outbox.put(seq, b"z" * size)
            model.append((seq, size))
            while len(model) > 5 or sum(s for _, s in model) > 100:
                model.pop(0)
                dropped += 1
        elif op == "ack_oldest" and model:
            outbox.ack(outbox.pending(limit=1)[0].id)
            model.pop(0)
        elif op == "restart":
            outbox.close()
            outbox = Outbox(path, **limits)  # type: ignore[arg-type]
        assert [e.seq for e in outbox.pending(limit=100)] == [s for s, _ in model]
        assert outbox.size_bytes == sum(s for _, s in model)
        assert outbox.dropped == dropped
    outbox.close()
