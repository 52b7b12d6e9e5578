"""A fake MCU for gateway tests: the link framing over a TCP socket, as QEMU's UART offers it.

It listens on a loopback port; the gateway opens ``socket://127.0.0.1:PORT`` with pyserial.
A thread pumps a ``link.Endpoint`` (ACKs, retransmissions) and collects delivered frames.
With ``reconnects`` it outlives the gateway, as an MCU on a UART does: when the connection
closes it waits for the next one, with a fresh link endpoint.

Like the C firmware it has its own Ed25519 key (``seed``; ``seed=None``: an MCU without one,
which the gateway enrolls with a key it keeps): its HELLO announces the public key and its
hardware profile, and it answers each ENROLL_CHALLENGE with ENROLL_PROOF, its signature of the
enroll-message it builds with its own uid and hardware (``forge``: a wrong signature).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.protocol import link
from device_sdk.protocol.cose import raw_public_key
from device_sdk.protocol.enrollment import ENROLL_CONTEXT
from device_sdk.protocol.status import Capabilities, LinkState, Status, encode_status

CAPS = Capabilities(firmware_version="fake-mcu 1.0", tflm_version="none",
                    ops=["FULLY_CONNECTED", "SOFTMAX"], arena_bytes=16_384,
                    slot_bytes=128 * 1024, pointer_bits=32)


def online_status(model: int | None = None) -> bytes:
    """Return the status payload an MCU sends at boot."""
    return encode_status(Status(LinkState.ONLINE, model, 0, 1, 4096, 0, CAPS))


class FakeMcu:
    """One MCU on one emulated UART."""

    def __init__(self, port: int = 0, *, reconnects: bool = False,
                 seed: bytes | None | bool = True, hardware: str = "qemu-mps2-an385",
                 forge: bool = False) -> None:
        self._server = socket.create_server(("127.0.0.1", port))
        self.port = int(self._server.getsockname()[1])
        self.url = f"socket://127.0.0.1:{self.port}"
        self.endpoint = link.Endpoint()
        self.frames: queue.Queue[link.Frame] = queue.Queue()
        self.received: list[link.Frame] = []
        self.mute = False  # while set, bytes from the gateway are dropped: a hung MCU
        self.reconnects = reconnects
        if seed is True:
            seed = os.urandom(32)
        self.key = Ed25519PrivateKey.from_private_bytes(seed) if seed else None
        self.public_key = raw_public_key(self.key.public_key()) if self.key else None
        self.hardware = hardware
        self.forge = forge
        self.uid: str | None = None
        self.challenges: list[link.EnrollChallenge] = []
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
        """Say HELLO (with the key and hardware profile, if it has a key) and send the boot
        status, as the firmware does."""
        self.uid = uid
        hardware = self.hardware if self.key is not None else None
        self.send(link.Kind.HELLO, link.encode_hello(link.Hello(uid, mtu, key=self.public_key,
                                                                hardware=hardware)))
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

    def _prove(self, payload: bytes) -> None:
        """Answer a challenge as enroll.c does: sign the enroll-message for our own uid."""
        challenge = link.decode_enroll_challenge(payload)
        self.challenges.append(challenge)
        if self.key is None or self.uid is None:
            return
        message = cbor2.dumps([ENROLL_CONTEXT, challenge.nonce, challenge.token_sha256, self.uid,
                               self.hardware, challenge.capabilities_sha256, challenge.via],
                              canonical=True)
        signature = self.key.sign(message)
        if self.forge:
            signature = signature[:32] + bytes(32)
        self.send(link.Kind.ENROLL_PROOF, link.encode_enroll_proof(signature))

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
                    if frame.kind == link.Kind.ENROLL_CHALLENGE:
                        self._prove(frame.payload)
                    self.frames.put(frame)
        except OSError:
            return
        finally:
            if conn is not None:
                conn.close()
