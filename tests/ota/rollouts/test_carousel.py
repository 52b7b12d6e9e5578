"""The carousel's schedule: one shared turn per wave, late joiners extend it, nobody left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ota.rollouts.carousel import PackageCarousel

T0 = datetime(2026, 11, 24, tzinfo=UTC)
WAIT = timedelta(seconds=3)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def turn(carousel: PackageCarousel, start: float, step: float = 0.01,
         limit: int = 10_000) -> list[tuple[int, int]]:
    """Send chunks while the carousel has something pending; return (offset, length) sent."""
    sent = []
    now = start
    while carousel.pending and len(sent) < limit:
        sent.append(carousel.next_chunk(4096, at(now)))
        now += step
    return sent


def covered(chunks: list[tuple[int, int]], size: int) -> bool:
    have = bytearray(size)
    for offset, length in chunks:
        have[offset:offset + length] = b"\x01" * length
    return all(have)


def test_a_wave_shares_one_turn() -> None:
    carousel = PackageCarousel(size=100_000)
    for key in range(1000):
        carousel.join(key, at(0.001 * key), at(1))
    assert carousel.should_run(at(1), more_coming=False, max_wait=WAIT)
    chunks = turn(carousel, 1)
    assert carousel.sent == 100_000  # exactly one turn
    assert covered(chunks, 100_000)


def test_waits_for_devices_still_checking_their_offer_but_not_forever() -> None:
    carousel = PackageCarousel(size=10_000)
    carousel.join(1, at(0), at(0))
    assert not carousel.should_run(at(1), more_coming=True, max_wait=WAIT)
    assert carousel.should_run(at(1), more_coming=False, max_wait=WAIT)
    carousel = PackageCarousel(size=10_000)
    carousel.join(1, at(0), at(0))
    assert not carousel.should_run(at(2.9), more_coming=True, max_wait=WAIT)
    assert carousel.should_run(at(3.1), more_coming=True, max_wait=WAIT)


def test_a_late_joiner_gets_the_part_it_missed_not_a_new_turn() -> None:
    size = 40_960  # ten chunks
    carousel = PackageCarousel(size=size)
    carousel.join(1, at(0), at(0))
    assert carousel.should_run(at(0), False, WAIT)
    first = [carousel.next_chunk(4096, at(1 + i)) for i in range(4)]  # chunks 0..3 at t=1..4
    carousel.join(2, at(2.5), at(4.5))  # joined between chunk 1 (t=2) and chunk 2 (t=3)
    rest = turn(carousel, 5, step=1)
    # Device 1 needs the ten chunks; device 2 surely has chunks 2.. and needs 0 and 1 again.
    assert [offset // 4096 for offset, _ in first + rest] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    late = [c for i, c in enumerate(first + rest) if i >= 2]
    assert covered(late, size)


def test_a_join_during_a_chunk_counts_from_the_next_one() -> None:
    carousel = PackageCarousel(size=8192)
    carousel.join(1, at(0), at(0))
    carousel.should_run(at(0), False, WAIT)
    carousel.next_chunk(4096, at(1))  # chunk 0 starts at t=1
    carousel.join(2, at(1), at(1))  # same instant: chunk 0 may have gone out before
    rest = turn(carousel, 2)
    assert [offset for offset, _ in rest] == [4096, 0]


def test_a_repeated_join_changes_nothing_and_idle_stops() -> None:
    carousel = PackageCarousel(size=4096)
    assert carousel.join(7, at(0), at(0))
    assert not carousel.join(7, at(5), at(5))
    carousel.should_run(at(0), False, WAIT)
    turn(carousel, 0)
    assert carousel.pending == 0
    assert not carousel.should_run(at(9), False, WAIT)
    assert not carousel.running


def test_a_join_after_the_turn_starts_a_new_one_from_where_it_stopped() -> None:
    carousel = PackageCarousel(size=12_288)  # three chunks
    carousel.join(1, at(0), at(0))
    carousel.should_run(at(0), False, WAIT)
    turn(carousel, 1)
    assert carousel.offset == 0
    carousel.join(2, at(10), at(10))
    assert carousel.should_run(at(10), False, WAIT)
    assert [offset for offset, _ in turn(carousel, 11)] == [0, 4096, 8192]


def test_joiners_during_a_turn_wait_for_the_next_one_while_more_may_come() -> None:
    """A turn serves the devices counted when it started; those that join meanwhile are
    batched into the next turn (after a pause for more), which goes on from where the first
    ended: the carousel does not keep turning for as long as joins trickle in."""
    carousel = PackageCarousel(size=40_960)
    carousel.join(1, at(0), at(0))
    quiet = timedelta(seconds=1)
    assert not carousel.should_run(at(0.5), more_coming=True, max_wait=WAIT, quiet=quiet)
    assert carousel.should_run(at(1.0), more_coming=True, max_wait=WAIT, quiet=quiet)  # calm
    first = []
    while carousel.sent < carousel.turn_end:
        first.append(carousel.next_chunk(4096, at(1.0 + 0.01 * len(first))))
        if len(first) == 5:
            carousel.join(2, at(1.04), at(1.05))  # joins half-way through the turn
        assert carousel.should_run(at(1.1), more_coming=True, max_wait=WAIT, quiet=quiet) \
            or carousel.sent >= carousel.turn_end
    assert covered(first, 40_960) and carousel.pending > 0  # device 2 still lacks the head
    assert not carousel.running  # paused: more may come
    carousel.join(3, at(1.5), at(1.5))
    assert not carousel.should_run(at(2.0), more_coming=True, max_wait=WAIT, quiet=quiet)
    assert carousel.should_run(at(2.6), more_coming=True, max_wait=WAIT, quiet=quiet)
    second = turn(carousel, 2.6)
    assert covered(second, 40_960)  # device 3 joined between turns: a whole length
    assert sum(length for _, length in first + second) == 2 * 40_960


def test_without_more_to_come_the_turn_goes_on_for_late_joiners() -> None:
    carousel = PackageCarousel(size=40_960)
    carousel.join(1, at(0), at(0))
    assert carousel.should_run(at(0), more_coming=False, max_wait=WAIT)
    carousel.next_chunk(4096, at(0.01))
    carousel.join(2, at(0.015), at(0.02))
    assert carousel.should_run(at(0.03), more_coming=False, max_wait=WAIT)  # no pause
    chunks = [(0, 4096)] + turn(carousel, 0.03)
    assert not carousel.should_run(at(1), more_coming=False, max_wait=WAIT)
    assert sum(length for _, length in chunks) == 40_960 + 4096  # the part device 2 missed
