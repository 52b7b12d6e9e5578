"""Reconnect back-off: exponential, bounded, jittered, reset only by a stable connection; and a
real link retrying a dead endpoint on that schedule."""

from __future__ import annotations

import random
import statistics
import threading
import time

import pytest

from device_sdk.mqtt.backoff import Backoff
from device_sdk.mqtt.link import BrokerEndpoint, Link, LinkConfig
from device_sdk.mqtt.reactor import Reactor


def test_delays_double_up_to_the_maximum_without_jitter() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, multiplier=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_jittered_delays_stay_within_their_window() -> None:
    """Each delay is drawn from [(1 - jitter) * ceiling, ceiling] of its attempt."""
    backoff = Backoff(initial=0.5, maximum=60.0, jitter=0.5, rng=random.Random(7))
    for attempt in range(12):
        top = backoff.ceiling(attempt)
        delay = backoff.next_delay()
        assert 0.5 * top <= delay <= top


def test_jitter_spreads_a_fleet_that_lost_the_broker_at_once() -> None:
    """Devices failing in the same instant retry at different times, not in one stampede."""
    delays = []
    for device in range(200):
        backoff = Backoff(initial=1.0, maximum=60.0, jitter=1.0, rng=random.Random(device))
        for _ in range(4):
            backoff.next_delay()
        delays.append(backoff.next_delay())  # fifth attempt: ceiling 16 s
    assert max(delays) <= 16.0
    assert statistics.pstdev(delays) > 3.0  # uniform on [0, 16] has sigma ~4.6
    assert len({round(d, 3) for d in delays}) > 190


def test_same_seed_gives_the_same_schedule() -> None:
    a = Backoff(rng=random.Random(3))
    b = Backoff(rng=random.Random(3))
    assert [a.next_delay() for _ in range(6)] == [b.next_delay() for _ in range(6)]


def test_only_a_stable_connection_resets_the_backoff() -> None:
    """A broker that accepts and kicks at once must not bring the device back to 1 s retries."""
    backoff = Backoff(initial=1.0, jitter=0.0, stable_after=10.0)
    for _ in range(4):
        backoff.next_delay()
    backoff.connection_ended(uptime_s=2.0)
    assert backoff.next_delay() == 16.0
    backoff.connection_ended(uptime_s=10.0)
    assert backoff.next_delay() == 1.0


def test_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(initial=1.0, maximum=90.0, jitter=0.0, attempts=100_000)
    assert backoff.next_delay() == 90.0


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 5, "maximum": 1}, {"multiplier": 0.5}, {"jitter": 2}]
)
def test_nonsense_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


class _Recorder:
    """A LinkListener that notes when each failed attempt is reported."""

    def __init__(self) -> None:
        self.failures: list[float] = []
        self.enough = threading.Event()

    def link_up(self, session_present: bool) -> None:
        raise AssertionError("nothing listens on that port")

    def link_down(self, reason: str) -> None:
        self.failures.append(time.monotonic())
        if len(self.failures) >= 5:
            self.enough.set()

    def link_message(self, topic: str, payload: bytes) -> None:
        pass

    def link_published(self, mid: int, reason_code: int) -> None:
        pass

    def link_refused(self, reason_code: int) -> None:
        pass


def test_link_retries_a_dead_broker_on_the_backoff_schedule(unused_port: int) -> None:
    """Connection refused five times: the gaps between attempts follow 0.1, 0.2, 0.4, 0.8 s."""
    reactor = Reactor("test-backoff")
    reactor.start()
    recorder = _Recorder()
    config = LinkConfig(BrokerEndpoint("127.0.0.1", unused_port, tls=False), client_id="dev-x")
    link = Link(config, reactor, recorder, backoff=Backoff(initial=0.1, jitter=0.0))
    try:
        link.start()
        assert recorder.enough.wait(10), f"only {len(recorder.failures)} attempts"
    finally:
        link.stop()
        assert link.stopped.wait(5)
        reactor.stop()
    gaps = [b - a for a, b in zip(recorder.failures, recorder.failures[1:])]
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4, 0.8]):
        assert expected * 0.9 <= gap <= expected + 0.25, gaps
    assert link.backoff.attempts >= 5
