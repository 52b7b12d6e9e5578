"""One serial port per MCU: pyserial bytes through a link ``Endpoint`` to and from the bridge.

``serial.serial_for_url`` opens real ports (``/dev/ttyACM0``) and test or emulator ones
(``socket://127.0.0.1:PORT`` for QEMU's UART, ``loop://``). Each port has its own thread,
which alone touches the port and its endpoint. It reads with a short timeout, so frames the
bridge queued for the MCU go out within ``read_timeout``; one frame is in flight at a time
(stop-and-wait, firmware/LINK.md), the rest wait in the child's outbox.

An MCU says HELLO only when it boots. The uid, MTU and public key (for an MCU with its own key)
last seen on each port are remembered in the state directory, so a restarted gateway speaks for
an MCU that kept running, and still knows which key it announced. The link is
kept alive with TIME frames (which also keep the MCU's clock right); when nothing comes back
for ``offline_s`` the child is published offline, and when it answers again it is asked for a
fresh status. A closed port is reopened after a growing delay.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from device_sdk.gateway.bridge import Bridge, Child, Outbox
from device_sdk.protocol import link
from device_sdk.protocol.reasons import ProtocolError

__all__ = ["PortMemory", "SerialChild"]

log = logging.getLogger(__name__)

PortOpener = Callable[[str], Any]


def open_port(url: str) -> serial.SerialBase:
    """Open a pyserial URL with the short read timeout the pump loop relies on."""
    return serial.serial_for_url(url, timeout=0.02)


class PortMemory:
    """The HELLO last seen on each port, in ``<state_dir>/ports.json``."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / "ports.json" if state_dir is not None else None
        self._lock = threading.Lock()

    def recall(self, port: str) -> tuple[str, int] | None:
        """Return ``(uid, mtu)`` last seen on ``port``, or None."""
        hello = self.recall_hello(port)
        return (hello.uid, hello.mtu) if hello is not None else None

    def recall_hello(self, port: str) -> link.Hello | None:
        """Return the HELLO last seen on ``port`` (uid, mtu, key, hardware), or None."""
        entry = self._read().get(port)
        if not (isinstance(entry, dict) and isinstance(entry.get("uid"), str)):
            return None
        key, hardware = entry.get("key"), entry.get("hardware")
        try:
            raw = bytes.fromhex(key) if isinstance(key, str) else None
        except ValueError:
            raw = None
        return link.Hello(entry["uid"], int(entry.get("mtu", 0)),
                          key=raw if raw is not None and len(raw) == 32 else None,
                          hardware=hardware if isinstance(hardware, str) else None)

    def remember(self, port: str, uid: str, mtu: int, *, key: bytes | None = None,
                 hardware: str | None = None) -> None:
        """Note who said HELLO on ``port``."""
        if self.path is None:
            return
        with self._lock:
            data = self._read()
            entry: dict[str, Any] = {"uid": uid, "mtu": mtu}
            if key is not None:
                entry["key"] = key.hex()
            if hardware is not None:
                entry["hardware"] = hardware
            data[port] = entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


class SerialChild(threading.Thread):
    """Serve one serial port until ``stop`` is set, reopening it when it closes."""

    def __init__(self, url: str, bridge: Bridge, stop: threading.Event, *,
                 memory: PortMemory | None = None, opener: PortOpener = open_port,
                 keepalive_s: float = 10.0, offline_s: float = 30.0,
                 reopen_s: tuple[float, float] = (0.5, 30.0)) -> None:
        super().__init__(name=f"serial {url}", daemon=True)
        self.url = url
        self.bridge = bridge
        self.stop_event = stop
        self.memory = memory or PortMemory(None)
        self.opener = opener
        self.keepalive_s = keepalive_s
        self.offline_s = offline_s
        self.reopen_s = reopen_s
        self.child: Child | None = None
        self.endpoint = link.Endpoint()
        self._warned = False

    def run(self) -> None:
        """Open, serve, and reopen the port with a growing delay, until stopped."""
        delay = self.reopen_s[0]
        while not self.stop_event.is_set():
            try:
                port = self.opener(self.url)
            except (serial.SerialException, OSError) as exc:
                log.warning("cannot open %s: %s; retrying in %.1f s", self.url, exc, delay)
            else:
                delay = self.reopen_s[0]
                try:
                    self._serve(port)
                except (serial.SerialException, OSError) as exc:
                    log.warning("port %s closed: %s", self.url, exc)
                except Exception:  # a bug must not take the other ports down with it
                    log.exception("serving %s failed", self.url)
                finally:
                    self._close(port)
            self.stop_event.wait(delay)
            delay = min(delay * 2, self.reopen_s[1])

    def _close(self, port: Any) -> None:
        if self.child is not None:
            self.bridge.detach(self.child)
            self.child = None
        try:
            port.close()
        except (serial.SerialException, OSError):
            pass

    def _serve(self, port: Any) -> None:
        self.endpoint = link.Endpoint()
        outbox: Outbox = Outbox()
        now = time.monotonic()
        last_rx = last_keepalive = now
        remembered = self.memory.recall_hello(self.url)
        if remembered is not None:
            # Speak for whoever was here before; a HELLO corrects it if the MCU changed.
            self._attach(link.Hello(remembered.uid, remembered.mtu or 544, key=remembered.key,
                                    hardware=remembered.hardware), outbox)
            outbox.put((link.Kind.STATUS_REQUEST, b""))
        log.info("serving %s", self.url)
        while not self.stop_event.is_set():
            data = port.read(1)  # returns at the first byte, or after the read timeout
            waiting = port.in_waiting if data else 0
            if waiting:
                data += port.read(waiting)
            now = time.monotonic()
            frames, out = self.endpoint.receive(data, now)
            if data:
                last_rx = now
                if self.child is not None and self.child.offline:
                    outbox.put((link.Kind.STATUS_REQUEST, b""))  # back: re-announce it
                    self.child.offline = False
            for frame in frames:
                self._deliver(frame, outbox)
            out += self.endpoint.poll(now)
            silent = now - last_rx
            if silent >= self.keepalive_s and now - last_keepalive >= self.keepalive_s:
                last_keepalive = now
                outbox.put((link.Kind.TIME, self.bridge.time_payload()))
            if silent >= self.offline_s and self.child is not None:
                self.bridge.mark_offline(self.child)
            if self.endpoint.idle and not outbox.empty():
                kind, payload = outbox.get_nowait()
                out += self.endpoint.send(kind, payload, now)
            if out:
                port.write(out)

    def _deliver(self, frame: link.Frame, outbox: Outbox) -> None:
        if frame.kind == link.Kind.HELLO:
            try:
                hello = link.decode_hello(frame.payload)
            except ProtocolError as exc:
                log.warning("bad HELLO on %s: %s", self.url, exc)
                return
            if (self.child is not None and self.child.uid == hello.uid
                    and self.child.key == hello.key):
                self.bridge.restarted(self.child, hello.mtu)
            else:  # another MCU, or the same uid with another key: admitted afresh
                if self.child is not None:
                    self.bridge.detach(self.child)
                    self.child = None
                self._attach(hello, outbox)
            if self.child is not None:
                self.memory.remember(self.url, hello.uid, hello.mtu, key=hello.key,
                                     hardware=hello.hardware)
            return
        if self.child is None:
            self.bridge.counters["frames_before_hello"] += 1
            if not self._warned:
                self._warned = True
                log.warning("an MCU on %s sends frames but never said HELLO (the gateway has "
                            "not met it before): reset it so it does", self.url)
            return
        self.bridge.on_frame(self.child, frame)

    def _attach(self, hello: link.Hello, outbox: Outbox) -> None:
        try:
            self.child = self.bridge.attach(hello.uid, hello.mtu, self.url, outbox, key=hello.key,
                                            hardware=hello.hardware)
        except ProtocolError as exc:
            log.error("MCU on %s has an id that cannot name topics: %s", self.url, exc)
            self.child = None
