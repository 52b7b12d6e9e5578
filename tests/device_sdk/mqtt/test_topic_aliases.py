"""MQTT 5 topic aliases on the device link, against the real Mosquitto.

A tap (a TCP forwarder that parses every MQTT packet both ways) sits between the device and the
broker's plain listener, so the tests see what the device really wrote: which publishes name
their topic, which carry an alias, whether an empty topic ever relies on an alias its
connection never set up. The broker is the judge of validity (a bad alias closes the
connection); the subscriber and the real worker's tables are the judges of delivery.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from device_sdk.client import DeviceClient
from device_sdk.client.identity import DeviceIdentity, MqttCredential
from device_sdk.mqtt.backoff import Backoff
from device_sdk.mqtt.link import TopicAliases
from device_sdk.protocol.events import Event, EventBatch, decode_batch, encode_batch
from device_sdk.protocol.status import Capabilities
from fleet.broker.access import ServiceRole
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import DEFAULT_TEMPLATE, MosquittoInstance
from fleet.devices.models import HardwareProfile
from testkit.broker import Probe, free_port, require_mosquitto
from testkit.stored import Fleet, assert_stored_exactly, wait_ingested
from testkit.traffic import Ledger
from testkit.worker import WorkerFactory

CAPS = Capabilities(
    firmware_version="alias-test 1.0", tflm_version="tflite-micro test",
    ops=["FULLY_CONNECTED", "SOFTMAX"], arena_bytes=65_536, slot_bytes=262_144, pointer_bits=64,
)
TIMEOUT = 15.0
EVENTS_BASE_MS = int(time.time() * 1000) - 2 * 3600 * 1000  # inside the server's query range


# -- the alias map of one connection (no broker) ---------------------------------------------


def test_aliases_are_numbered_from_one_in_first_use_order_up_to_the_maximum() -> None:
    aliases = TopicAliases(2)
    assert aliases.lookup("a") == (1, False)
    aliases.bind("a", 1)
    assert aliases.lookup("a") == (1, True)
    assert aliases.lookup("b") == (2, False)
    aliases.bind("b", 2)
    assert aliases.lookup("c") == (0, False), "no alias left: the topic goes in full"
    assert aliases.lookup("b") == (2, True)


def test_a_lookup_that_was_not_bound_does_not_use_up_the_alias() -> None:
    """A publish paho refused never told the broker: the next one must name the topic again."""
    aliases = TopicAliases(10)
    assert aliases.lookup("a") == (1, False)
    assert aliases.lookup("a") == (1, False)
    assert len(aliases) == 0


@pytest.mark.parametrize("maximum", [0, -3])
def test_a_broker_without_aliases_gets_none(maximum: int) -> None:
    aliases = TopicAliases(maximum)
    assert aliases.maximum == 0
    assert aliases.lookup("a") == (0, False)


# -- a tap between device and broker ---------------------------------------------------------

_FIXED = {1: (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 2: (0x13, 0x21, 0x22, 0x23),
          4: (0x02, 0x11, 0x18, 0x27)}
_WIDTH = {ident: width for width, idents in _FIXED.items() for ident in idents}
_STRINGS = (0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F)  # 2-byte length + bytes


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _properties(data: bytes, at: int) -> tuple[dict[int, Any], int]:
    """Parse an MQTT 5 property block at ``at``; return the integer-valued ones and the end."""
    length, at = _varint(data, at)
    end, props = at + length, {}
    while at < end:
        ident, at = _varint(data, at)
        if ident in _WIDTH:
            props[ident] = int.from_bytes(data[at:at + _WIDTH[ident]], "big")
            at += _WIDTH[ident]
        elif ident == 0x0B:
            props[ident], at = _varint(data, at)
        elif ident in _STRINGS:
            at += 2 + int.from_bytes(data[at:at + 2], "big")
        elif ident == 0x26:  # user property: two strings
            for _ in range(2):
                at += 2 + int.from_bytes(data[at:at + 2], "big")
        else:
            raise AssertionError(f"unknown MQTT 5 property {ident:#x}")
    return props, end


@dataclass
class Publish:
    """One PUBLISH the device wrote, as it was on the wire."""

    topic: str  # the topic field: "" when the alias stands for it
    alias: int  # 0: no Topic Alias property
    resolved: str  # the topic the broker understands, or "?" for an unknown alias
    retain: bool
    payload: bytes


@dataclass
class Connection:
    """What one device connection carried."""

    alias_maximum: int | None = None  # from the CONNACK; None until it came
    drop_pubacks: bool = False  # swallow the broker's PUBACKs on this connection
    publishes: list[Publish] = field(default_factory=list)
    aliases: dict[int, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


class MqttTap:
    """Forward device <-> broker packet by packet and record each connection's publishes.

    A connection's ``drop_pubacks`` swallows the broker's PUBACKs, so the device keeps its
    publishes in flight although the broker (and the worker behind it) has them; ``cut``
    closes every connection without DISCONNECT, as a network failure would.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.connections: list[Connection] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Close every open connection at once (both sides), without DISCONNECT."""
        with self._lock:
            for sock in self._sockets:
                for action in (lambda s: s.shutdown(socket.SHUT_RDWR), lambda s: s.close()):
                    try:
                        action(sock)
                    except OSError:
                        pass
            self._sockets.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def wait_for(self, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait until ``check()`` holds (evaluated under the tap's lock)."""
        with self.changed:
            if not self.changed.wait_for(check, timeout):
                seen = [(len(c.publishes), c.violations[:2]) for c in self.connections[:5]]
                raise AssertionError(f"tap: gave up after {len(self.connections)} connections "
                                     f"(publishes, violations of the first five): {seen}")

    def events(self, connection: Connection) -> list[Publish]:
        return [p for p in connection.publishes if p.resolved.endswith("/events")]

    def _accept(self) -> None:
        while True:
            try:
                device, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            connection = Connection()
            with self._lock:
                self._sockets += [device, upstream]
                self.connections.append(connection)
            threading.Thread(target=self._pump, args=(device, upstream, connection, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, device, connection, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, connection: Connection,
              from_device: bool) -> None:
        buffer = b""
        try:
            while data := src.recv(65536):
                buffer += data
                while (packet := self._next_packet(buffer)) is not None:
                    buffer = buffer[len(packet):]
                    if self._inspect(packet, connection, from_device):
                        dst.sendall(packet)
        except (OSError, IndexError):
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _next_packet(buffer: bytes) -> bytes | None:
        """Return the first whole packet in ``buffer``, or None if it is not all there yet."""
        if len(buffer) < 2:
            return None
        remaining, shift, at = 0, 0, 1
        while True:
            if at >= len(buffer):
                return None
            byte = buffer[at]
            at += 1
            remaining |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        return buffer[:at + remaining] if len(buffer) >= at + remaining else None

    def _inspect(self, packet: bytes, connection: Connection, from_device: bool) -> bool:
        """Record what matters in ``packet``; return whether to forward it."""
        kind, flags = packet[0] >> 4, packet[0] & 0x0F
        _, body_at = _varint(packet, 1)
        with self.changed:
            if not from_device and kind == 2:  # CONNACK: flags, reason, properties
                props, _ = _properties(packet, body_at + 2)
                connection.alias_maximum = props.get(0x22, 0)
            elif not from_device and kind == 4 and connection.drop_pubacks:
                return False
            elif from_device and kind == 3:
                self._record_publish(packet, body_at, flags, connection)
            self.changed.notify_all()
        return True

    @staticmethod
    def _record_publish(packet: bytes, at: int, flags: int, connection: Connection) -> None:
        topic_len = int.from_bytes(packet[at:at + 2], "big")
        topic = packet[at + 2:at + 2 + topic_len].decode()
        at += 2 + topic_len + (2 if (flags >> 1) & 3 else 0)  # the packet id at QoS > 0
        props, at = _properties(packet, at)
        alias = props.get(0x23, 0)
        if alias and (connection.alias_maximum is None or alias > connection.alias_maximum):
            connection.violations.append(f"alias {alias} beyond the broker's maximum "
                                         f"{connection.alias_maximum}")
        if alias and topic:
            connection.aliases[alias] = topic
        resolved = topic or connection.aliases.get(alias, "?")
        if resolved == "?":
            connection.violations.append(f"empty topic with alias {alias} never set up on "
                                         f"this connection")
        connection.publishes.append(Publish(topic, alias, resolved, bool(flags & 1),
                                            packet[at:]))


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def taps() -> Iterator[Callable[[str, int], MqttTap]]:
    made: list[MqttTap] = []

    def make(host: str, port: int) -> MqttTap:
        made.append(MqttTap(host, port))
        return made[-1]

    yield make
    for tap in made:
        tap.close()


@pytest.fixture
def device_clients() -> Iterator[Callable[..., DeviceClient]]:
    """Return a maker of clients on the plain listener (batches of 4, quick retries)."""
    made: list[DeviceClient] = []

    def make(uid: str, password: str, broker_url: str, state: Path) -> DeviceClient:
        state.mkdir(parents=True, exist_ok=True)
        identity = DeviceIdentity(
            device_id=uid, hardware="stm32f746", server="http://unused",
            mqtt=MqttCredential(broker_url, uid, password, None),
        )
        made.append(DeviceClient(
            identity, state_dir=state, capabilities=CAPS, batch_events=4, durable=False,
            backoff=Backoff(initial=0.2, maximum=0.5, jitter=0.0),
        ))
        return made[-1]

    yield make
    for client in made:
        if not client.link.stopped.is_set():
            client.close(timeout=2)


def recent_events(start: int, count: int) -> list[Event]:
    """Return ``count`` events a second apart, two hours ago."""
    return [Event(EVENTS_BASE_MS + 1000 * i, i % 5, 100 + i % 150, 20 + i % 7)
            for i in range(start, start + count)]


def subscriber(access: DynsecAccess, broker: MosquittoInstance, topic: str) -> Probe:
    """Return a connected monitor-role client subscribed to ``topic``."""
    name = f"alias-watch-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    access.provision_service(name, password, ServiceRole.MONITOR)
    watcher = Probe(broker.host, broker.port, name, password, name)
    assert watcher.connect().value == 0
    assert watcher.subscribe(topic).value == 1
    return watcher


def receive(watcher: Probe, count: int) -> list[Any]:
    messages = []
    for _ in range(count):
        message = watcher.receive(TIMEOUT)
        assert message is not None, f"only {len(messages)} of {count} messages arrived"
        messages.append(message)
    return messages


def assert_alias_framing(tap: MqttTap, connection: Connection, events_topic: str) -> None:
    """Pin the framing of one connection: status in full, events aliased after the first."""
    assert connection.violations == []
    statuses = [p for p in connection.publishes if p.resolved.endswith("/status")]
    assert statuses and all(p.topic and not p.alias and p.retain for p in statuses)
    events = tap.events(connection)
    assert events, "no event batch on this connection"
    assert (events[0].topic, events[0].alias) == (events_topic, 1), "the first names the topic"
    assert all((p.topic, p.alias) == ("", 1) for p in events[1:]), "later ones use the alias"


# -- against the real broker ------------------------------------------------------------------

@pytest.mark.integration
def test_aliased_publishes_arrive_at_a_subscriber_with_the_full_topic(
    broker: MosquittoInstance, broker_access: DynsecAccess, monitor: Any, taps: Any,
    device_clients: Any, uid: Callable[[str], str], tmp_path: Path,
) -> None:
    """Mosquitto announces 10 aliases; the device names its events topic once, then sends an
    empty topic (~33 bytes less per batch); the subscriber sees the full topic every time."""
    device, password = uid("alias"), secrets.token_urlsafe(12)
    broker_access.provision_device(device, password)
    events_topic = f"fleet/v1/{device}/events"
    watcher = monitor(events_topic)
    tap = taps(broker.host, broker.port)
    client = device_clients(device, password, f"mqtt://127.0.0.1:{tap.port}", tmp_path)
    client.start()
    assert client.wait_connected(TIMEOUT), client.link.last_error
    assert client.link.topic_alias_maximum == 10  # Mosquitto's default max_topic_alias

    for event in recent_events(0, 16):
        client.record(event)
    assert client.wait_drained(TIMEOUT)
    received = watcher.collect(lambda ms: len(ms) >= 4)
    assert [m.topic for m in received] == [events_topic] * 4
    assert [e for m in received for e in decode_batch(bytes(m.payload)).events] == \
        recent_events(0, 16)

    (connection,) = tap.connections
    assert connection.alias_maximum == 10
    assert_alias_framing(tap, connection, events_topic)
    assert [p.payload for p in tap.events(connection)] == [bytes(m.payload) for m in received]
    assert client.link.connects == 1, "the broker never kicked the device for a bad alias"
    client.stop()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_reconnect_with_aliased_batches_in_flight_stores_every_event_once(
    broker: MosquittoInstance, broker_access: DynsecAccess, hardware_profile: HardwareProfile,
    worker_factory: WorkerFactory, taps: Any, device_clients: Any, tmp_path: Path,
) -> None:
    """The broker (and the worker) got three aliased batches whose PUBACKs never reached the
    device; the connection dies. The device must not resend them with the dead connection's
    alias (the broker would kick it at every reconnect): the outbox sends them again on the
    new connection, naming the topic once more. The server stores each event exactly once."""
    fleet = Fleet(broker, broker_access, hardware_profile)
    (device,) = fleet.add(1, prefix="alias")
    ledger = Ledger(fleet.ids)
    worker_factory(broker)
    tap = taps(broker.host, broker.port)
    client = device_clients(device, fleet.passwords[device], f"mqtt://127.0.0.1:{tap.port}",
                            tmp_path)
    events_topic = f"fleet/v1/{device}/events"
    first_seq = client.batcher.sequence.peek()
    sent = recent_events(0, 40)
    ledger.add(device, [EventBatch.of(first_seq + i, 0, sent[4 * i:4 * i + 4])
                        for i in range(10)])
    client.start()
    assert client.wait_connected(TIMEOUT), client.link.last_error

    for event in sent[:8]:  # two batches, acknowledged
        client.record(event)
    assert client.wait_drained(TIMEOUT)
    first = tap.connections[0]
    first.drop_pubacks = True
    for event in sent[8:20]:  # three batches the broker takes but the device never hears of
        client.record(event)
    tap.wait_for(lambda: len(tap.events(first)) == 5)
    time.sleep(0.3)  # the broker has answered them (the PUBACKs are swallowed)
    assert len(client.outbox) == 3
    tap.cut()
    tap.wait_for(lambda: len(tap.connections) == 2 and len(tap.events(tap.connections[1])) >= 3)
    for event in sent[20:]:  # five more batches on the new connection
        client.record(event)
    assert client.wait_drained(TIMEOUT), f"{len(client.outbox)} batches never acknowledged"
    wait_ingested(ledger)
    client.stop()

    assert_stored_exactly(ledger)
    assert client.link.connects == 2, "no reconnect loop: the broker accepted every alias"
    second = tap.connections[1]
    for connection in (first, second):
        assert_alias_framing(tap, connection, events_topic)
    unacked = [p.payload for p in tap.events(first)[2:]]
    assert [p.payload for p in tap.events(second)[:3]] == unacked, "resent in order"
    assert [decode_batch(p.payload).seq for p in tap.events(second)] == \
        [first_seq + i for i in range(2, 10)]
    expected = [encode_batch(b) for _, b in sorted(ledger.sent.items())]
    assert [p.payload for p in tap.events(first)[:2] + tap.events(second)] == expected


@pytest.mark.integration
def test_a_broker_that_announces_no_aliases_gets_full_topics(
    tmp_path: Path, taps: Any, device_clients: Any,
) -> None:
    """``max_topic_alias 0``: the CONNACK carries no Topic Alias Maximum, so the device sends
    every topic in full (an alias would be a protocol error) and everything arrives."""
    require_mosquitto()
    template = tmp_path / "no-aliases.conf.template"
    text = DEFAULT_TEMPLATE.read_text()
    assert text.count("protocol mqtt\n") == 2  # one line per listener; the option is per listener
    template.write_text(text.replace("protocol mqtt\n", "protocol mqtt\nmax_topic_alias 0\n"))
    broker = MosquittoInstance(tmp_path / "broker", free_port(), free_port(),
                               secrets.token_urlsafe(16), template=template)
    broker.start()
    try:
        with DynsecAccess(broker.host, broker.port, broker.admin_username,
                          broker.admin_password) as access:
            device, password = "noalias-device", secrets.token_urlsafe(12)
            access.provision_device(device, password)
            events_topic = f"fleet/v1/{device}/events"
            watcher = subscriber(access, broker, events_topic)
            tap = taps(broker.host, broker.port)
            client = device_clients(device, password, f"mqtt://127.0.0.1:{tap.port}",
                                    tmp_path / "device")
            client.start()
            assert client.wait_connected(TIMEOUT), client.link.last_error
            assert client.link.topic_alias_maximum == 0
            for event in recent_events(0, 12):
                client.record(event)
            assert client.wait_drained(TIMEOUT)
            received = receive(watcher, 3)
            client.stop()
            watcher.close()
    finally:
        broker.stop()
    assert [m.topic for m in received] == [events_topic] * 3
    (connection,) = tap.connections
    assert connection.alias_maximum == 0
    assert connection.violations == []
    assert len(tap.events(connection)) == 3
    assert all(p.topic == p.resolved and p.alias == 0 for p in connection.publishes)
