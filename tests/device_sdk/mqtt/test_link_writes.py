"""The link joins what a device sends in one turn of its reactor (reports, a subscribe, acks)
into one write, on a real Mosquitto: the broker gets every packet, in order, and a stop in the
same turn still says goodbye after them."""

from __future__ import annotations

import secrets
import threading
from typing import Any

from device_sdk.mqtt.config import LinkConfig
from device_sdk.mqtt.endpoint import BrokerEndpoint, Will
from device_sdk.mqtt.link import Link
from device_sdk.mqtt.reactor import Reactor
from fleet.broker.access import ServiceRole
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MosquittoInstance
from testkit.broker import ProbeFactory

TIMEOUT = 10.0


class Listener:
    """Records what the link tells its owner."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.ups = 0
        self.down = threading.Event()
        self.acked: list[int] = []
        self.all_acked = threading.Event()
        self.expected = 0

    def link_up(self, session_present: bool) -> None:
        self.ups += 1
        self.up.set()

    def link_down(self, reason: str) -> None:
        self.down.set()

    def link_message(self, topic: str, payload: bytes) -> None:
        pass

    def link_published(self, mid: int, reason_code: int) -> None:
        assert reason_code < 0x80
        self.acked.append(mid)
        if len(self.acked) == self.expected:
            self.all_acked.set()

    def link_refused(self, reason_code: int) -> None:
        pass


def start_link(broker: MosquittoInstance, access: DynsecAccess, uid: str,
               will: Will | None = None) -> tuple[Link, Reactor, Listener, list[bytes]]:
    """A device's link (provisioned as ``uid``), its sends recorded."""
    password = secrets.token_urlsafe(12)
    access.provision_device(uid, password)
    reactor = Reactor(f"test-{uid}")
    reactor.start()
    listener = Listener()
    config = LinkConfig(BrokerEndpoint(broker.host, broker.port, tls=False), client_id=uid,
                        username=uid, password=password, will=will)
    link = Link(config, reactor, listener)
    link.start()
    assert listener.up.wait(TIMEOUT), link.last_error
    sends: list[bytes] = []
    client: Any = link._client
    real = client._sock_send

    def recording(buf: bytes) -> int:
        sends.append(bytes(buf))
        return real(buf)

    client._sock_send = recording
    return link, reactor, listener, sends


def watcher(broker_access: DynsecAccess, probe: ProbeFactory, topic: str) -> Any:
    """A server-side subscriber (the worker's rights) to ``topic``."""
    name, password = f"svc-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    broker_access.provision_service(name, password, ServiceRole.WORKER)
    watching = probe(name, password)
    watching.connect()
    watching.subscribe(topic)
    return watching


def test_publishes_of_one_turn_go_out_in_one_write(
    broker: MosquittoInstance, broker_access: DynsecAccess, probe: ProbeFactory,
) -> None:
    uid = f"joined-{secrets.token_hex(3)}"
    topic = f"fleet/v1/{uid}/ota/report"
    watching = watcher(broker_access, probe, topic)
    link, reactor, listener, sends = start_link(broker, broker_access, uid)
    try:
        listener.expected = 4
        mids: list[int | None] = []

        def one_turn() -> None:  # as a device's install step publishes its reports
            mids.extend(link.publish(topic, b"report %d" % i, qos=1) for i in range(4))

        reactor.call_soon(one_turn)
        assert listener.all_acked.wait(TIMEOUT), listener.acked
        assert listener.acked == mids
        got = [watching.receive() for _ in range(4)]
        assert [m.payload for m in got if m] == [b"report %d" % i for i in range(4)]
        assert len(sends) == 1, [len(s) for s in sends]  # four PUBLISH packets, one write
        assert sends[0].count(b"report ") == 4
    finally:
        link.stop()
        assert link.stopped.wait(TIMEOUT)
        reactor.stop()


def test_a_stop_right_after_a_publish_sends_both_in_order(
    broker: MosquittoInstance, broker_access: DynsecAccess, probe: ProbeFactory,
) -> None:
    """The report queued in the same turn as the stop reaches the broker before the goodbye,
    and the goodbye still asks for the will (the link's "offline" on a clean stop)."""
    uid = f"stop-{secrets.token_hex(3)}"
    report, status = f"fleet/v1/{uid}/ota/report", f"fleet/v1/{uid}/status"
    reports = watcher(broker_access, probe, report)
    statuses = watcher(broker_access, probe, status)
    link, reactor, _listener, sends = start_link(broker, broker_access, uid,
                                                Will(status, b"gone", retain=False))
    try:

        def publish_then_stop() -> None:  # both queued in one turn
            link.publish(report, b"last", qos=1)
            link.stop()

        reactor.call_soon(publish_then_stop)
        assert link.stopped.wait(TIMEOUT)
        got = reports.receive()
        assert got is not None and got.payload == b"last"
        will = statuses.receive()
        assert will is not None and will.payload == b"gone"
        assert [s[0] for s in sends] == [0x32, 0xE0]  # the report, then the DISCONNECT
        assert sends[1][2] == 0x04  # reason: disconnect with will message
    finally:
        reactor.stop()


def test_writes_go_out_after_a_drop_and_a_reconnect(
    broker: MosquittoInstance, broker_access: DynsecAccess, probe: ProbeFactory,
) -> None:
    """A drop (as a power cut) in the same turn as a publish: after the reconnect, joined
    writes work as before (nothing is left waiting for a flush of the old connection), and
    the publish caught in the drop is delivered at most once (QoS 1 may resend it)."""
    uid = f"again-{secrets.token_hex(3)}"
    topic = f"fleet/v1/{uid}/ota/report"
    watching = watcher(broker_access, probe, topic)
    link, reactor, listener, _sends = start_link(broker, broker_access, uid)
    try:
        listener.up.clear()

        def publish_then_drop() -> None:
            link.publish(topic, b"before", qos=1)
            link.abort()

        reactor.call_soon(publish_then_drop)
        assert listener.down.wait(TIMEOUT)
        assert listener.up.wait(TIMEOUT) and listener.ups == 2, link.last_error
        sends: list[bytes] = []
        client: Any = link._client
        real = client._sock_send
        client._sock_send = lambda buf: sends.append(bytes(buf)) or real(buf)
        listener.acked.clear()
        listener.all_acked.clear()
        listener.expected = 2
        reactor.call_soon(lambda: [link.publish(topic, b"after %d" % i, qos=1) for i in (1, 2)])
        assert listener.all_acked.wait(TIMEOUT), listener.acked
        got = []
        while (message := watching.receive(timeout=2.0)) is not None:
            got.append(message.payload)
        assert got[-2:] == [b"after 1", b"after 2"]
        assert got.count(b"before") <= 1  # at most once more than the broker saw it: QoS 1
        assert len([s for s in sends if b"after" in s]) == 1  # both in one write
    finally:
        link.stop()
        assert link.stopped.wait(TIMEOUT)
        reactor.stop()
