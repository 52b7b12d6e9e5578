"""One thread that drives many sockets and timers: the network loop of the device SDK.

paho's ``loop_start`` spends a thread per client, which does not scale to a simulated fleet of
thousands. A :class:`Reactor` instead waits on every socket of its clients with one selector,
runs due timers, and runs callables handed to it from other threads. Blocking work (the TCP
connect and TLS handshake of a new connection) goes to a small shared thread pool, whose result
comes back to the reactor thread through :meth:`Reactor.call_soon`.

Threading contract:

* :meth:`call_soon`, :meth:`call_later`, :meth:`start`, :meth:`stop`, :meth:`sync` and
  :meth:`run_blocking` are safe from any thread (``sync`` from any but the reactor's own).
* :meth:`watch`, :meth:`set_writable` and :meth:`unwatch` must run on the reactor thread.
* Everything the reactor calls (socket handlers, timers, ``call_soon`` callables) runs on the
  reactor thread, must not block, and must not raise: an exception is logged and swallowed so
  one faulty device cannot stop the loop that serves hundreds.

The selector is epoll (or poll, kqueue), never ``select()``: ``select`` cannot watch a
descriptor numbered 1024 or above, which a process with a few thousand device sockets soon
hands out (the simulator holds 10,000 connections, bench/simulator.py).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Reactor", "Timer"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# The longest the loop sleeps with nothing due: bounds how late a stop request is noticed.
_MAX_WAIT_S = 1.0


def _make_selector() -> selectors.BaseSelector:
    """Return an epoll (or kqueue, /dev/poll, poll) selector: anything but ``select()``."""
    for name in ("EpollSelector", "KqueueSelector", "DevpollSelector", "PollSelector"):
        kind = getattr(selectors, name, None)
        if kind is not None:
            try:
                return kind()  # type: ignore[no-any-return]
            except OSError:  # e.g. epoll unavailable in an odd sandbox: try the next one
                continue
    log.warning("no epoll or poll on this platform: select() limits the reactor to fd < 1024")
    return selectors.DefaultSelector()


class Timer:
    """A scheduled call; :meth:`cancel` it to skip it."""

    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Skip this call if it has not run yet (safe from any thread)."""
        self.cancelled = True


class _Watch:
    """What the selector knows about one socket: its handlers."""

    __slots__ = ("on_readable", "on_writable")

    def __init__(self, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> None:
        self.on_readable = on_readable
        self.on_writable = on_writable


class Reactor:
    """Run socket handlers, timers and handed-over calls on one named thread."""

    def __init__(
        self, name: str = "device-sdk-net", *, executor: Executor | None = None, connectors: int = 2
    ) -> None:
        self.name = name
        self._selector = _make_selector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._timers: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._ready: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()  # guards _timers and _ready across threads
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(connectors, thread_name_prefix=f"{name}-conn")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reactor thread (a daemon: it never keeps a process alive on its own)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait for the thread; pending timers are dropped."""
        self._stopping.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Release the selector and the wake-up socket pair once stopped."""
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def running(self) -> bool:
        """Say whether the reactor thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def in_reactor_thread(self) -> bool:
        """Say whether the caller runs on this reactor's thread."""
        return threading.current_thread() is self._thread

    # -- scheduling (any thread) ---------------------------------------------------------

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the reactor thread as soon as possible."""
        with self._lock:
            self._ready.append((fn, args))
        if not self.in_reactor_thread():
            self._wake()

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Timer:
        """Run ``fn(*args)`` on the reactor thread after ``delay`` seconds (monotonic clock)."""
        timer = Timer(time.monotonic() + max(0.0, delay), fn, args)
        with self._lock:
            heapq.heappush(self._timers, (timer.when, next(self._counter), timer))
        if not self.in_reactor_thread():
            self._wake()
        return timer

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until what the reactor is running or has queued now is done (not from itself)."""
        if self.in_reactor_thread():
            raise RuntimeError("sync() from the reactor thread would wait for itself")
        done = threading.Event()
        self.call_soon(done.set)
        return done.wait(timeout)

    def run_blocking(
        self, fn: Callable[[], T], done: Callable[[T | None, BaseException | None], None]
    ) -> None:
        """Run blocking ``fn`` in the connector pool; call ``done(result, error)`` back here."""

        def finished(future: Future[T]) -> None:
            error = future.exception() if not future.cancelled() else None
            result = future.result() if error is None and not future.cancelled() else None
            self.call_soon(done, result, error)

        try:
            self._executor.submit(fn).add_done_callback(finished)
        except RuntimeError as exc:  # the pool is shut down: the reactor is stopping
            self.call_soon(done, None, exc)

    # -- sockets (reactor thread only) ----------------------------------------------------

    def watch(
        self,
        sock: socket.socket,
        on_readable: Callable[[], None],
        on_writable: Callable[[], None],
        *,
        writable: bool = False,
    ) -> None:
        """Call ``on_readable`` (and ``on_writable`` while ``writable``) when ``sock`` is ready."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writable else 0)
        self._selector.register(sock, events, _Watch(on_readable, on_writable))

    def set_writable(self, sock: socket.socket, writable: bool) -> None:
        """Ask (or stop asking) to hear when ``sock`` can take more bytes."""
        try:
            key = self._selector.get_key(sock)
        except (KeyError, ValueError):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writable else 0)
        if key.events != events:
            self._selector.modify(sock, events, key.data)

    def unwatch(self, sock: socket.socket) -> None:
        """Forget ``sock``; call before closing it so its descriptor can be reused safely."""
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    @property
    def watched(self) -> int:
        """Return how many sockets the selector watches (the wake-up socket excluded)."""
        return len(self._selector.get_map()) - 1

    # -- the loop -------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closing

    def _run(self) -> None:
        log.debug("reactor %s started", self.name)
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # the loop serves many devices: keep it alive
                log.exception("reactor %s: unexpected error in the loop", self.name)
        log.debug("reactor %s stopped", self.name)

    def _step(self) -> None:
        with self._lock:
            wait = 0.0 if self._ready else _MAX_WAIT_S
            if self._timers and wait:
                wait = min(wait, max(0.0, self._timers[0][0] - time.monotonic()))
        for key, mask in self._selector.select(wait):
            if key.data is None:
                self._drain_wakeups()
                continue
            watch: _Watch = key.data
            if mask & selectors.EVENT_READ:
                self._safely(watch.on_readable)
            if mask & selectors.EVENT_WRITE:
                self._safely(watch.on_writable)
        now = time.monotonic()
        due: list[Timer] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
            ready = list(self._ready)
            self._ready.clear()
        for timer in due:
            if not timer.cancelled:
                self._safely(timer.fn, *timer.args)
        for fn, args in ready:
            self._safely(fn, *args)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _safely(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a handler's bug must not stop other devices
            log.exception("reactor %s: error in %r", self.name, fn)
