"""A fake MCU for gateway tests: the link framing over a TCP socket, as QEMU's UART offers it.

It listens on a loopback port; the gateway opens ``socket://127.0.0.1:PORT`` with pyserial.
A thread pumps a ``link.Endpoint`` (ACKs, retransmissions) and collects delivered frames.
With ``reconnects`` it outlives the gateway, as an MCU on a UART does: when the connection
closes it waits for the next one, with a fresh link endpoint.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

from device_sdk.protocol import link
from device_sdk.protocol.status import Capabilities, LinkState, Status, encode_status

CAPS = Capabilities(firmware_version="fake-mcu 1.0", tflm_version="none",
                    ops=["FULLY_CONNECTED", "SOFTMAX"], arena_bytes=16_384,
                    slot_bytes=128 * 1024, pointer_bits=32)


def online_status(model: int | None = None) -> bytes:
    """Return the status payload an MCU sends at boot."""
    return encode_status(Status(LinkState.ONLINE, model, 0, 1, 4096, 0, CAPS))


class FakeMcu:
    """One MCU on one emulated UART."""

    def __init__(self, port: int = 0, *, reconnects: bool = False) -> None:
        self._server = socket.create_server(("127.0.0.1", port))
        self.port = int(self._server.getsockname()[1])
        self.url = f"socket://127.0.0.1:{self.port}"
        self.endpoint = link.Endpoint()
        self.frames: queue.Queue[link.Frame] = queue.Queue()
        self.received: list[link.Frame] = []
        self.mute = False  # while set, bytes from the gateway are dropped: a hung MCU
        self.reconnects = reconnects
        self.connections = 0
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until the gateway opened the port."""
        assert self._connected.wait(timeout), "the gateway never opened the port"

    def send(self, kind: link.Kind, payload: bytes = b"") -> None:
        """Queue a message to the gateway."""
        with self._lock:
            out = self.endpoint.send(kind, payload, time.monotonic())
            if out and self._conn is not None:
                self._conn.sendall(out)

    def boot(self, uid: str, mtu: int = 544, status: bytes | None = None) -> None:
        """Say HELLO and send the boot status, as the firmware does."""
        self.send(link.Kind.HELLO, link.encode_hello(link.Hello(uid, mtu)))
        self.send(link.Kind.STATUS, status or online_status())

    def wait_for(self, kind: link.Kind, timeout: float = 10.0) -> link.Frame:
        """Return the next frame of ``kind`` from the gateway (others are kept in ``received``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                frame = self.frames.get(timeout=max(left, 0.001))
            except queue.Empty:
                kinds = [link.Kind(f.kind).name for f in self.received]
                raise AssertionError(f"no {kind.name} within {timeout} s; got {kinds}") from None
            self.received.append(frame)
            if frame.kind == kind:
                return frame

    def close(self) -> None:
        """Close the port, as an unplugged MCU would."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def disconnected(self, timeout: float = 10.0) -> None:
        """Wait until the gateway's side of the port closed (its process died, say); needs
        ``reconnects``."""
        deadline = time.monotonic() + timeout
        while self._connected.is_set():
            assert time.monotonic() < deadline, "the gateway still holds the port"
            time.sleep(0.02)

    def _pump(self) -> None:
        self._server.settimeout(0.05)
        while not self._stop.is_set():
            self._serve_one()
            if not self.reconnects:
                return
            with self._lock:
                self._conn = None
                self.endpoint = link.Endpoint()
            self._connected.clear()

    def _serve_one(self) -> None:
        while not self._stop.is_set() and self._conn is None:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.02)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conn = conn
                pending = self.endpoint.poll(time.monotonic() + 3600)  # sent before connect
                if pending:
                    conn.sendall(pending)
            self.connections += 1
            self._connected.set()
        conn = self._conn
        try:
            while conn is not None and not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                    if not data:
                        return
                except TimeoutError:
                    data = b""
                if self.mute:
                    continue
                with self._lock:
                    now = time.monotonic()
                    delivered, out = self.endpoint.receive(data, now)
                    out += self.endpoint.poll(now)
                    if out:
                        conn.sendall(out)
                for frame in delivered:
                    self.frames.put(frame)
        except OSError:
            return
        finally:
            if conn is not None:
                conn.close()
