"""The reactor at simulated-fleet scale: it watches descriptors numbered above 1024 (where
``select()`` gives up), keeps thousands of self re-arming timers on time and in order, and
takes timers from other threads without losing or reordering them."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from device_sdk.mqtt.reactor import Reactor


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor("test-reactor-scale")
    r.start()
    yield r
    r.stop()
    r.close()


def test_the_selector_is_not_select(reactor: Reactor) -> None:
    """select() cannot watch descriptor 1024 or above: the reactor must use epoll or poll."""
    assert not isinstance(reactor._selector, selectors.SelectSelector)


def test_a_socket_numbered_above_1024_is_watched(reactor: Reactor) -> None:
    """A process with thousands of device sockets hands out descriptors past 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1200
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"the hard open-file limit {hard} is below {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    filler: list[int] = []
    try:
        while True:  # push the next descriptors above 1024
            fd = os.open(os.devnull, os.O_RDONLY)
            filler.append(fd)
            if fd > 1030:
                break
        a, b = socket.socketpair()
        assert a.fileno() > 1024
        a.setblocking(False)
        got = threading.Event()

        def readable() -> None:
            if a.recv(16) == b"ping":
                got.set()

        reactor.call_soon(reactor.watch, a, readable, lambda: None)
        assert reactor.sync()
        b.send(b"ping")
        assert got.wait(2), "the reactor never saw the socket above fd 1024 become readable"
        reactor.call_soon(reactor.unwatch, a)
        assert reactor.sync()
        a.close()
        b.close()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_thousands_of_rearming_timers_keep_their_rate_and_never_fire_early(
    reactor: Reactor,
) -> None:
    """Like a fleet's keepalive and batch ticks: each timer re-arms itself from its callback."""
    count, period, runs = 3000, 0.1, 5
    fired = [0] * count
    early: list[float] = []
    done = threading.Event()
    finished = [0]

    def tick(i: int, due: float) -> None:
        now = time.monotonic()
        if now < due:
            early.append(due - now)
        fired[i] += 1
        if fired[i] < runs:
            reactor.call_later(period, tick, i, now + period)
        else:
            finished[0] += 1
            if finished[0] == count:
                done.set()

    def arm() -> None:
        start = time.monotonic()
        for i in range(count):
            reactor.call_later(period * i / count, tick, i, start + period * i / count)

    started = time.monotonic()
    reactor.call_soon(arm)
    assert done.wait(10), f"{finished[0]} of {count} timers finished"
    assert early == []
    assert fired == [runs] * count
    # Five periods of 0.1 s each, some slack for a loaded machine.
    assert time.monotonic() - started < runs * period + 2.0


def test_timers_from_other_threads_and_the_reactor_run_in_due_order(reactor: Reactor) -> None:
    """Timers set from outside go through the hand-over queue, yet keep their due order."""
    ran: list[str] = []
    done = threading.Event()
    reactor.call_later(0.09, lambda: (ran.append("outside 0.09"), done.set()))
    reactor.call_soon(lambda: reactor.call_later(0.03, ran.append, "inside 0.03"))
    reactor.call_later(0.06, ran.append, "outside 0.06")
    reactor.call_soon(lambda: reactor.call_later(0.075, ran.append, "inside 0.075"))
    threading.Thread(target=reactor.call_later, args=(0.045, ran.append, "thread 0.045")).start()
    assert done.wait(2)
    assert ran == ["inside 0.03", "thread 0.045", "outside 0.06", "inside 0.075", "outside 0.09"]


def test_a_timer_set_before_start_runs_once_started() -> None:
    r = Reactor("test-reactor-late-start")
    done = threading.Event()
    r.call_later(0.0, done.set)
    try:
        time.sleep(0.05)
        assert not done.is_set()
        r.start()
        assert done.wait(2)
    finally:
        r.stop()
        r.close()


def test_a_cancelled_cross_thread_timer_does_not_run(reactor: Reactor) -> None:
    ran: list[str] = []
    reactor.call_later(0.02, ran.append, "cancelled").cancel()
    assert reactor.sync()
    time.sleep(0.06)
    assert reactor.sync()
    assert ran == []
