"""The wire bench's capture: the device SDK's link publishing to a minimal MQTT 5 listener.

``CapturingListener`` answers CONNACK (announcing topic aliases or not), PUBACK and PINGRESP,
resolves topic aliases per connection as a broker would and records each PUBLISH exactly as
paho wrote it; ``Wire`` publishes through ``device_sdk.mqtt.link.Link`` one packet at a time and
checks each against the layout of ``bench/wire_layout.py``. Imported by ``bench/wire.py`` (run
as a script: ``bench/`` is on ``sys.path`` as its folder).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from wire_layout import ALIAS_PROPERTY, TOPIC, UID, framed_size, read_varint

from device_sdk.mqtt.backoff import Backoff
from device_sdk.mqtt.config import BrokerEndpoint, LinkConfig
from device_sdk.mqtt.link import Link
from device_sdk.mqtt.reactor import Reactor

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Captured:
    """One PUBLISH as the listener received it."""

    size: int  # bytes on the wire, fixed header included
    topic: str  # the topic field: "" when an alias stands for it
    alias: int  # 0: no Topic Alias property
    resolved: str  # the topic the alias stands for


class CapturingListener:
    """Accept MQTT 5 clients; answer CONNACK, PUBACK and PINGRESP; record each PUBLISH.

    The CONNACK announces ``alias_maximum`` topic aliases (none when 0). Aliases are resolved
    per connection, as a broker does; a publish relying on an alias its connection never set
    up, or beyond the maximum, is a protocol error: the listener notes it and hangs up.
    """

    def __init__(self, alias_maximum: int) -> None:
        self.alias_maximum = alias_maximum
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.captured: list[Captured] = []
        self.errors: list[str] = []
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def _connack(self) -> bytes:
        # flags 0 (no session), reason 0 (success), then the properties
        props = bytes([0x22]) + self.alias_maximum.to_bytes(2, "big") if self.alias_maximum else b""
        body = b"\x00\x00" + bytes([len(props)]) + props
        return bytes([0x20, len(body)]) + body

    def _publish(self, body: bytes, size: int, aliases: dict[int, str]) -> bytes | None:
        """Record a QoS 1 PUBLISH; return its packet id, or None for a protocol error."""
        topic_len = int.from_bytes(body[:2], "big")
        topic = body[2:2 + topic_len].decode()
        at = 2 + topic_len
        packet_id = body[at:at + 2]
        props_len, at = read_varint(body, at + 2)
        props, alias = body[at:at + props_len], 0
        if props:  # the link sets no property but the alias
            if props[0] != 0x23 or props_len != ALIAS_PROPERTY:
                self.errors.append(f"unexpected PUBLISH properties {props.hex()}")
                return None
            alias = int.from_bytes(props[1:3], "big")
            if not 1 <= alias <= self.alias_maximum:
                self.errors.append(f"topic alias {alias} beyond the maximum {self.alias_maximum}")
                return None
            if topic:
                aliases[alias] = topic
        resolved = topic or aliases.get(alias, "")
        if not resolved:
            self.errors.append(f"empty topic with alias {alias}, never set up on this connection")
            return None
        self.captured.append(Captured(size, topic, alias, resolved))
        return packet_id

    def _serve(self, conn: socket.socket) -> None:
        aliases: dict[int, str] = {}  # per connection, like the broker's
        with conn:
            try:
                while True:
                    first = self._read(conn, 1)[0]
                    remaining, shift, header = 0, 0, 1
                    while True:
                        byte = self._read(conn, 1)[0]
                        header += 1
                        remaining |= (byte & 0x7F) << shift
                        shift += 7
                        if byte < 0x80:
                            break
                    body = self._read(conn, remaining)
                    kind = first >> 4
                    if kind == 1:  # CONNECT
                        conn.sendall(self._connack())
                    elif kind == 3:  # PUBLISH, QoS 1 -> PUBACK with its packet id
                        packet_id = self._publish(body, header + remaining, aliases)
                        if packet_id is None:
                            return
                        conn.sendall(b"\x40\x02" + packet_id)
                    elif kind == 12:  # PINGREQ
                        conn.sendall(b"\xd0\x00")
                    elif kind == 14:  # DISCONNECT
                        return
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        """Stop listening."""
        self.server.close()


class Wire:
    """The device SDK's link publishing to a capturing listener, one packet at a time.

    Implements the link's listener interface: ``link_up``, ``link_published``, ...
    """

    def __init__(self, alias_maximum: int) -> None:
        self.listener = CapturingListener(alias_maximum)
        self.reactor = Reactor("wire-bench")
        self.reactor.start()
        config = LinkConfig(BrokerEndpoint("127.0.0.1", self.listener.port, tls=False),
                            client_id=UID, log_transitions=False)
        # Reconnect at once: the first-packet figures reconnect before every packet.
        backoff = Backoff(initial=0.001, maximum=0.001, multiplier=1.0, jitter=0.0)
        self.link = Link(config, self.reactor, self, backoff=backoff)
        self._up = threading.Event()
        self._acked = threading.Semaphore(0)
        self._fresh = True  # no publish on this connection yet
        self.link.start()
        self._wait_up()
        if self.link.topic_alias_maximum != alias_maximum:
            raise RuntimeError(f"the link took {self.link.topic_alias_maximum} aliases from a "
                               f"CONNACK announcing {alias_maximum}")

    # -- LinkListener (reactor thread) ---------------------------------------------------

    def link_up(self, session_present: bool) -> None:
        self._up.set()

    def link_down(self, reason: str) -> None:
        pass

    def link_message(self, topic: str, payload: bytes) -> None:
        pass

    def link_published(self, mid: int, reason_code: int) -> None:
        self._acked.release()

    def link_refused(self, reason_code: int) -> None:
        pass

    # -- measuring ------------------------------------------------------------------------

    def _wait_up(self) -> None:
        if not self._up.wait(TIMEOUT_S):
            raise RuntimeError(f"the link did not connect: {self.link.last_error}")

    def reconnect(self) -> None:
        """Drop the connection and wait for the next one: its alias map starts empty."""
        self._up.clear()
        self.link.abort()
        self._wait_up()
        self._fresh = True

    def packet_size(self, payload: bytes, framing: str, *, warm_up: bool = True) -> int:
        """Publish ``payload`` at QoS 1 as the device client does; return its packet's bytes.

        ``framing`` is one of :data:`wire_layout.FRAMINGS` (see bench/wire.py). For "aliased", a
        connection that has not named the topic yet does so first with an empty publish, not
        counted; with ``warm_up=False`` this packet names it instead (and is counted so).
        """
        if framing == "first_packet":
            self.reconnect()
        elif framing == "aliased" and self._fresh and warm_up:
            self._send(b"", framing)
        return self._send(payload, framing)

    def _send(self, payload: bytes, framing: str) -> int:
        """Publish, wait for the PUBACK, check the packet against the layout; return its size."""
        first, self._fresh = self._fresh, False
        before = len(self.listener.captured)
        self.reactor.call_soon(self._publish, payload)
        if not self._acked.acquire(timeout=TIMEOUT_S) or len(self.listener.captured) != before + 1:
            raise RuntimeError(f"no PUBACK for the publish: {self.listener.errors}")
        packet = self.listener.captured[-1]
        expected = framed_size(framing, len(payload), first)
        named = framing != "aliased" or first
        layout = (TOPIC if named else "", 0 if framing == "no_alias" else 1, TOPIC)
        if (packet.topic, packet.alias, packet.resolved) != layout or packet.size != expected:
            raise RuntimeError(f"paho wrote {packet}, the layout says {layout}, {expected} bytes")
        return packet.size

    def _publish(self, payload: bytes) -> None:
        if self.link.publish(TOPIC, payload, qos=1, alias=True) is None:
            raise RuntimeError("the link refused the publish")

    def close(self) -> None:
        """Disconnect and stop."""
        self.link.stop()
        self.link.stopped.wait(TIMEOUT_S)
        self.reactor.stop()
        self.reactor.close()
        self.listener.close()
