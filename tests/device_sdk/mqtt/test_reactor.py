"""The reactor runs timers in order, takes work from other threads, watches sockets, and keeps
serving everyone when one handler raises."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from device_sdk.mqtt.reactor import Reactor


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor("test-reactor")
    r.start()
    yield r
    r.stop()
    r.close()


def test_timers_run_in_due_order_on_the_reactor_thread(reactor: Reactor) -> None:
    ran: list[tuple[str, bool]] = []
    done = threading.Event()
    reactor.call_later(0.06, lambda: (ran.append(("c", reactor.in_reactor_thread())), done.set()))
    reactor.call_later(0.02, lambda: ran.append(("a", reactor.in_reactor_thread())))
    reactor.call_later(0.04, lambda: ran.append(("b", reactor.in_reactor_thread())))
    assert done.wait(2)
    assert ran == [("a", True), ("b", True), ("c", True)]


def test_a_cancelled_timer_does_not_run(reactor: Reactor) -> None:
    ran: list[str] = []
    done = threading.Event()
    reactor.call_later(0.02, ran.append, "cancelled").cancel()
    reactor.call_later(0.05, done.set)
    assert done.wait(2)
    assert ran == []


def test_call_soon_from_another_thread_wakes_a_sleeping_loop(reactor: Reactor) -> None:
    time.sleep(0.05)  # let the loop settle into its idle (up to 1 s) wait
    done = threading.Event()
    started = time.monotonic()
    reactor.call_soon(done.set)
    assert done.wait(2)
    assert time.monotonic() - started < 0.5


def test_a_raising_handler_is_logged_and_the_loop_goes_on(
    reactor: Reactor, caplog: pytest.LogCaptureFixture
) -> None:
    done = threading.Event()

    def broken() -> None:
        raise RuntimeError("a device bug")

    reactor.call_soon(broken)
    reactor.call_later(0.01, broken)
    reactor.call_later(0.03, done.set)
    assert done.wait(2)
    assert reactor.running
    assert "a device bug" in caplog.text


def test_watched_sockets_report_readable_and_writable(reactor: Reactor) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    got = threading.Event()
    writable = threading.Event()
    received: list[bytes] = []

    def on_readable() -> None:
        received.append(a.recv(100))
        got.set()

    def watch() -> None:
        reactor.watch(a, on_readable, writable.set, writable=True)

    reactor.call_soon(watch)
    assert writable.wait(2)
    reactor.call_soon(reactor.set_writable, a, False)
    b.send(b"ping")
    assert got.wait(2)
    assert received == [b"ping"]
    reactor.call_soon(reactor.unwatch, a)
    a.close()
    b.close()


def test_blocking_work_runs_in_the_pool_and_reports_back_here(reactor: Reactor) -> None:
    results: list[tuple[object, object, bool]] = []
    done = threading.Event()

    def report(result: object, error: BaseException | None) -> None:
        results.append((result, type(error).__name__ if error else None, reactor.in_reactor_thread()))
        if len(results) == 2:
            done.set()

    reactor.run_blocking(lambda: threading.current_thread().name, report)
    reactor.run_blocking(lambda: 1 / 0, report)
    assert done.wait(2)
    names = {r[0] for r in results}
    assert any(isinstance(n, str) and "conn" in n for n in names)
    assert (None, "ZeroDivisionError", True) in results
    assert all(in_reactor for *_, in_reactor in results)
