"""The device client against the real server and broker: enrollment over HTTP, MQTT 5 over TLS,
retained status (capabilities on the first of each connection), event batches, the last will,
and an outage survived by the outbox (queued, kept across a restart, drained in order without
duplicates)."""

from __future__ import annotations

import os
import queue
import random
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_sdk.client import DeviceClient
from device_sdk.client.identity import DeviceIdentity, EnrollmentError, MqttCredential, enroll
from device_sdk.mqtt.backoff import Backoff
from device_sdk.protocol.events import Event, EventBatch, decode_batch
from device_sdk.protocol.status import Capabilities, LinkState, decode_status
from device_sdk.protocol.topics import Channel, package_filter, package_topic
from fleet.broker.mosquitto import MosquittoInstance

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

T0 = 1_717_000_000_000
CAPS = Capabilities(
    firmware_version="sdk-test 1.0", tflm_version="tflite-micro test",
    ops=["FULLY_CONNECTED", "SOFTMAX"], arena_bytes=65_536, slot_bytes=262_144, pointer_bits=64,
)


def events(start: int, count: int) -> list[Event]:
    return [Event(T0 + 1000 * i, i % 4, 200, 12) for i in range(start, start + count)]


def fast_backoff() -> Backoff:
    return Backoff(initial=0.2, maximum=1.0, rng=random.Random(1))


def is_status(state: LinkState, topic: str) -> Callable[[list[Any]], bool]:
    """Return a check that the latest status received on ``topic`` says ``state``."""

    def check(messages: list[Any]) -> bool:
        statuses = [m for m in messages if m.topic == topic]
        return bool(statuses) and decode_status(bytes(statuses[-1].payload)).state is state

    return check


class CuttableProxy:
    """A TCP forwarder between device and broker: ``cut`` it to simulate a network outage.

    Cutting closes both sides of every connection without an MQTT DISCONNECT (the broker
    publishes the will, the device sees the connection drop) and refuses new connections
    until ``restore``.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown first: close alone does not wake a thread blocked in accept().
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                for action in (lambda s: s.shutdown(socket.SHUT_RDWR), lambda s: s.close()):
                    try:
                        action(sock)
                    except OSError:
                        pass
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                device, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [device, upstream]
            for a, b in ((device, upstream), (upstream, device)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def make_client() -> Iterator[Callable[..., DeviceClient]]:
    """Return a maker of clients (batches of 4, quick retries); close leftovers at the end."""
    made: list[DeviceClient] = []

    def make(identity: DeviceIdentity, state: Path, **kwargs: Any) -> DeviceClient:
        kwargs.setdefault("batch_events", 4)
        made.append(DeviceClient(
            identity, state_dir=state, capabilities=CAPS, backoff=fast_backoff(),
            durable=False, **kwargs,
        ))
        return made[-1]

    yield make
    for client in made:
        if not client.link.stopped.is_set():
            client.close(timeout=2)


@pytest.fixture
def proxies() -> Iterator[list[CuttableProxy]]:
    made: list[CuttableProxy] = []
    yield made
    for proxy in made:
        proxy.cut()


@pytest.fixture
def token(enrollment_token_factory: Callable[..., str]) -> str:
    return enrollment_token_factory(max_uses=10)


def test_enrollment_stores_a_private_identity_and_is_idempotent(
    fleet_server: str, token: str, tmp_path: Path, uid: Callable[[str], str]
) -> None:
    state = tmp_path / "dev"
    first = enroll(fleet_server, token, state_dir=state, hardware="stm32f746",
                   capabilities=CAPS, uid=uid("idem"))
    assert first.mqtt.url.startswith("mqtts://")
    assert first.mqtt.username == first.device_id == uid("idem")
    assert first.mqtt.ca_file and "BEGIN CERTIFICATE" in Path(first.mqtt.ca_file).read_text()
    for name in ("device.key", "identity.json"):
        assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert DeviceIdentity.load(state) == first

    again = enroll(fleet_server, token, state_dir=state, hardware="stm32f746", capabilities=CAPS)
    assert again.device_id == first.device_id  # same key, same device
    assert again.mqtt.credential != first.mqtt.credential  # a fresh credential, persisted
    assert DeviceIdentity.load(state).mqtt.credential == again.mqtt.credential


def test_a_refused_enrollment_raises_the_server_reason(
    fleet_server: str, tmp_path: Path
) -> None:
    with pytest.raises(EnrollmentError) as refused:
        enroll(fleet_server, "no-such-token", state_dir=tmp_path, hardware="stm32f746",
               capabilities=CAPS)
    assert (refused.value.reason, refused.value.status) == ("token_unknown", 403)


def test_device_connects_over_tls_publishes_status_and_batches_then_goes_offline(
    fleet_server: str, token: str, tmp_path: Path, monitor: Any, uid: Callable[[str], str],
    make_client: Callable[..., DeviceClient],
) -> None:
    identity = enroll(fleet_server, token, state_dir=tmp_path, hardware="stm32f746",
                      capabilities=CAPS, uid=uid("tls"))
    status_topic = f"fleet/v1/{identity.device_id}/status"
    events_topic = f"fleet/v1/{identity.device_id}/events"
    watcher = monitor(status_topic, events_topic)
    client = make_client(identity, tmp_path, model=0)
    client.start()
    assert client.wait_connected(10), client.link.last_error
    watcher.collect(is_status(LinkState.ONLINE, status_topic))
    status = decode_status(watcher.on(status_topic)[-1])
    assert status.capabilities == CAPS
    assert (status.model, status.slot, status.seq) == (0, 0, 0)

    for event in events(0, 10):
        client.record(event)  # two batches of 4 close at once
    client.flush()  # and the last 2 events
    assert client.wait_drained(10)
    watcher.collect(lambda ms: len(watcher.on(events_topic)) >= 3)
    batches = [decode_batch(p) for p in watcher.on(events_topic)]
    assert [len(b.events) for b in batches] == [4, 4, 2]
    assert [e for b in batches for e in b.events] == events(0, 10)
    seqs = [b.seq for b in batches]
    assert seqs == sorted(set(seqs))
    assert {b.model for b in batches} == {0}
    assert client.snapshot().acked == 3
    client.stop()
    # A clean stop still announces "offline": the DISCONNECT asks the broker for the will.
    watcher.collect(is_status(LinkState.OFFLINE, status_topic))


def test_an_idle_client_stops_its_age_checks_and_a_new_batch_still_closes_by_age(
    fleet_server: str, token: str, tmp_path: Path, monitor: Any, uid: Callable[[str], str],
    make_client: Callable[..., DeviceClient],
) -> None:
    identity = enroll(fleet_server, token, state_dir=tmp_path, hardware="stm32f746",
                      capabilities=CAPS, uid=uid("tick"))
    events_topic = f"fleet/v1/{identity.device_id}/events"
    watcher = monitor(events_topic)
    client = make_client(identity, tmp_path, model=0, batch_age_s=1.5)
    client.start()
    assert client.wait_connected(10), client.link.last_error
    deadline = time.monotonic() + 5
    while client._ticking and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client._ticking  # no open batch: no timer wakes this device every second

    recorded = time.monotonic()
    client.record(events(0, 1)[0])  # one event of a batch of 4: only its age closes it
    watcher.collect(lambda ms: len(watcher.on(events_topic)) >= 1)
    assert time.monotonic() - recorded >= 1.4
    assert [decode_batch(p).events for p in watcher.on(events_topic)] == [events(0, 1)]
    assert client.wait_drained(10)
    deadline = time.monotonic() + 5
    while client._ticking and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client._ticking  # and it stops again once the batch is gone


def test_outage_keeps_batches_across_a_restart_and_drains_them_in_order(
    fleet_server: str, broker: MosquittoInstance, token: str, tmp_path: Path, monitor: Any,
    uid: Callable[[str], str], make_client: Callable[..., DeviceClient],
    proxies: list[CuttableProxy],
) -> None:
    """Cut the network: the will says offline, batches wait in the outbox (even across a device
    restart), and after the network returns they arrive in order, each exactly once."""
    identity = enroll(fleet_server, token, state_dir=tmp_path, hardware="stm32f746",
                      capabilities=CAPS, uid=uid("outage"))
    status_topic = f"fleet/v1/{identity.device_id}/status"
    events_topic = f"fleet/v1/{identity.device_id}/events"
    watcher = monitor(status_topic, events_topic)
    proxy = CuttableProxy(broker.host, broker.tls_port)
    proxies.append(proxy)
    via_proxy = f"mqtts://127.0.0.1:{proxy.port}"
    down = threading.Event()
    client = make_client(identity, tmp_path, broker_url=via_proxy)
    client.on_disconnect = lambda c, reason: down.set()
    client.start()
    assert client.wait_connected(10), client.link.last_error
    for event in events(0, 4):
        client.record(event)
    assert client.wait_drained(10)

    proxy.cut()
    assert down.wait(10), "the device did not notice the outage"
    watcher.collect(is_status(LinkState.OFFLINE, status_topic))  # the last will
    for event in events(4, 8):
        client.record(event)
    assert len(client.outbox) == 2, "batches made during the outage wait in the outbox"
    client.close(timeout=3)  # the device restarts while still offline

    restarted = make_client(identity, tmp_path, broker_url=via_proxy)
    assert len(restarted.outbox) == 2
    restarted.start()
    for event in events(12, 4):
        restarted.record(event)
    assert len(restarted.outbox) == 3
    assert not restarted.wait_connected(0.5)

    proxy.restore()
    assert restarted.wait_connected(15), restarted.link.last_error
    assert restarted.wait_drained(15)
    watcher.collect(lambda ms: len(watcher.on(events_topic)) >= 4)
    watcher.collect(is_status(LinkState.ONLINE, status_topic))
    restarted.stop()
    batches: list[EventBatch] = [decode_batch(p) for p in watcher.on(events_topic)]
    seqs = [b.seq for b in batches]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == 4, seqs
    assert [e for b in batches for e in b.events] == events(0, 16)
    assert len(restarted.outbox) == 0


def test_a_refused_credential_is_retried_with_backoff_and_never_connects(
    broker: MosquittoInstance, tmp_path: Path, uid: Callable[[str], str],
    make_client: Callable[..., DeviceClient],
) -> None:
    device_id = uid("nocred")
    identity = DeviceIdentity(
        device_id=device_id, hardware="stm32f746", server="http://unused",
        mqtt=MqttCredential(broker.tls_url, device_id, "wrong-password", str(broker.ca_cert)),
    )
    attempts: list[str] = []
    enough = threading.Event()
    client = make_client(identity, tmp_path)
    client.on_disconnect = lambda c, reason: (attempts.append(reason), len(attempts) >= 3
                                              and enough.set())
    client.start()
    assert enough.wait(15)
    client.close()
    assert client.link.connects == 0
    assert all("refused" in reason or "disconnected" in reason for reason in attempts), attempts
    assert client.link.backoff.attempts >= 3


def test_an_abrupt_drop_publishes_the_last_will_and_the_device_comes_back(
    fleet_server: str, token: str, tmp_path: Path, monitor: Any, uid: Callable[[str], str],
    make_client: Callable[..., DeviceClient],
) -> None:
    identity = enroll(fleet_server, token, state_dir=tmp_path, hardware="stm32f746",
                      capabilities=CAPS, uid=uid("drop"))
    status_topic = f"fleet/v1/{identity.device_id}/status"
    watcher = monitor(status_topic)
    client = make_client(identity, tmp_path)
    client.start()
    assert client.wait_connected(10)
    watcher.collect(is_status(LinkState.ONLINE, status_topic))
    client.link.abort()  # the TCP connection ends without DISCONNECT, as in a power cut
    watcher.collect(is_status(LinkState.OFFLINE, status_topic))
    watcher.collect(is_status(LinkState.ONLINE, status_topic))  # reconnected on its own
    assert client.link.connects == 2
    client.stop()


def test_capabilities_ride_on_the_first_status_of_each_connection_only(
    fleet_server: str, token: str, tmp_path: Path, monitor: Any, uid: Callable[[str], str],
    make_client: Callable[..., DeviceClient],
) -> None:
    """The status at connect carries the capabilities; the one after a model switch leaves
    them out (unchanged); after a reconnect the first status carries them again."""
    identity = enroll(fleet_server, token, state_dir=tmp_path, hardware="stm32f746",
                      capabilities=CAPS, uid=uid("lean"))
    status_topic = f"fleet/v1/{identity.device_id}/status"
    watcher = monitor(status_topic)

    def statuses(count: int) -> list[Any]:
        watcher.collect(lambda ms: len(watcher.on(status_topic)) >= count)
        return [decode_status(p) for p in watcher.on(status_topic)]

    client = make_client(identity, tmp_path)
    client.start()
    assert client.wait_connected(10), client.link.last_error
    first = statuses(1)[0]
    assert (first.state, first.model, first.capabilities) == (LinkState.ONLINE, 0, CAPS)

    client.set_model(7, manifest_seq=3)  # what the OTA agent does once a package is confirmed
    switched = statuses(2)[1]
    assert (switched.state, switched.model, switched.seq) == (LinkState.ONLINE, 7, 3)
    assert switched.capabilities is None
    client.update_status()
    assert statuses(3)[2].capabilities is None

    client.link.abort()  # a dropped connection: the will, then a new connection
    watcher.collect(is_status(LinkState.OFFLINE, status_topic))
    watcher.collect(is_status(LinkState.ONLINE, status_topic))
    will, again = statuses(5)[3:5]
    assert (will.state, will.capabilities) == (LinkState.OFFLINE, None)
    assert (again.state, again.model, again.seq, again.capabilities) == (
        LinkState.ONLINE, 7, 3, CAPS)
    client.set_model(8)
    assert statuses(6)[5].capabilities is None
    assert client.link.connects == 2
    client.stop()


def test_an_offer_sent_while_the_device_is_away_waits_in_its_session(
    fleet_server: str, token: str, tmp_path: Path, broker_access: Any, probe: Any, monitor: Any,
    uid: Callable[[str], str], make_client: Callable[..., DeviceClient],
) -> None:
    """clean_start=False with a session expiry: the broker queues QoS 1 offers for the device.
    Then the OTA paths: a package fan-out subscription, and a report published by the device."""
    identity = enroll(fleet_server, token, state_dir=tmp_path, hardware="stm32f746",
                      capabilities=CAPS, uid=uid("offer"))
    first = make_client(identity, tmp_path)
    first.start()
    assert first.wait_connected(10)
    first.stop()  # subscribed once; the session outlives the connection

    publisher_name = f"sdk-publisher-{uid('p')}"
    broker_access.provision_service(publisher_name, "publisher-pw-123", "publisher")
    publisher = probe(publisher_name, "publisher-pw-123")
    assert publisher.connect().value == 0
    offer_topic = f"fleet/v1/{identity.device_id}/ota/offer"
    assert publisher.publish(offer_topic, b"\x84signed-manifest").value == 0  # a subscriber

    # Package fan-out is granted per deployment (the controller does it at the offer).
    broker_access.grant_package(7, [identity.device_id])
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    second = make_client(identity, tmp_path)
    second.on_message = lambda c, topic, payload: received.put((topic, payload))
    sessions: list[bool] = []
    second.on_connect = lambda c, session_present: sessions.append(session_present)
    second.start()
    assert received.get(timeout=10) == (offer_topic, b"\x84signed-manifest")
    assert sessions == [True]

    fanout = package_topic(7)
    second.subscribe(package_filter(7))
    # The PUBACK says 0, not 16 ("no matching subscribers"), once the subscription is in place.
    deadline = time.monotonic() + 10
    while publisher.publish(fanout, b"\x83\x07\x00\x40").value != 0:
        assert time.monotonic() < deadline, "the fan-out subscription never took effect"
    assert received.get(timeout=10)[0] == fanout

    report_topic = f"fleet/v1/{identity.device_id}/ota/report"
    watcher = monitor(report_topic)
    second.publish(Channel.OTA_REPORT, b"\x83\x07\x02\x00")
    watcher.collect(lambda ms: bool(watcher.on(report_topic)))
    assert watcher.on(report_topic) == [b"\x83\x07\x02\x00"]
    second.stop()
