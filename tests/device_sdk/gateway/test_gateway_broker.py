"""The gateway on the real broker: one TLS identity speaks for its children and nobody else.

Fake MCUs on ``socket://`` ports, the real Uplink/Bridge/SerialChild, the session Mosquitto
with dynamic security; a monitor watches what reaches the fleet, and a worker-role probe plays
the server's OTA side (offers, unicast chunks, the package carousel).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from device_sdk.gateway.bridge import Bridge
from device_sdk.gateway.serial_link import SerialChild
from device_sdk.gateway.uplink import Uplink
from device_sdk.protocol import link
from device_sdk.protocol.events import Event, EventBatch, encode_batch
from device_sdk.protocol.ota_messages import (
    Chunk,
    ChunkRequest,
    decode_chunk,
    decode_chunk_request,
    encode_chunk,
    encode_chunk_request,
    encode_fanout_chunk,
)
from device_sdk.protocol.status import OFFLINE_PAYLOAD, LinkState, decode_status
from device_sdk.protocol.topics import package_topic
from fleet.broker.access import ServiceRole
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MosquittoInstance
from testkit.broker import ProbeFactory
from tests.device_sdk.gateway.fake_mcu import FakeMcu

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
PACKAGE = bytes(range(256)) * 16  # 4,096 bytes: one carousel chunk


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
    return result


class RunningGateway:
    """Uplink + bridge + one serial thread per fake MCU, stopped at teardown."""

    def __init__(self, broker: MosquittoInstance, uid: str, password: str) -> None:
        self.uplink = Uplink(broker.tls_url, uid, password, ca_pem=broker.ca_cert.read_text())
        self.bridge = Bridge(self.uplink)
        self.uplink.on_message = self.bridge.on_message
        self.stop = threading.Event()
        self.ports: list[SerialChild] = []
        self.uplink.start()
        assert self.uplink.wait_connected(10), "gateway did not connect"

    def serve(self, mcu: FakeMcu) -> SerialChild:
        port = SerialChild(mcu.url, self.bridge, self.stop, reopen_s=(0.2, 1.0))
        port.start()
        self.ports.append(port)
        mcu.wait_connected()
        return port

    def close(self) -> None:
        self.stop.set()
        for port in self.ports:
            port.join(timeout=5)
        self.uplink.flush(3)
        self.uplink.stop()


@pytest.fixture
def gateway_factory(broker: MosquittoInstance) -> Iterator[Callable[[str, str], RunningGateway]]:
    made: list[RunningGateway] = []

    def make(uid: str, password: str) -> RunningGateway:
        made.append(RunningGateway(broker, uid, password))
        return made[-1]

    yield make
    for gateway in made:
        gateway.close()


@pytest.fixture
def server(broker_access: DynsecAccess, probe: ProbeFactory) -> Any:
    """A probe with the worker's rights: it sends offers and chunks like the server."""
    name, password = f"gw-test-worker-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    broker_access.provision_service(name, password, ServiceRole.WORKER)
    worker = probe(name, password)
    assert worker.connect().value == 0
    return worker


def test_gateway_speaks_for_its_child_and_is_refused_for_a_stranger(
    broker_access: DynsecAccess, gateway_factory: Callable[[str, str], RunningGateway],
    monitor: Callable[..., Any], uid: Callable[[str], str],
) -> None:
    """Status (retained) and events of a child reach the fleet; a non-child gets PUBACK 135."""
    gw, child, stranger = uid("gw"), uid("child"), uid("stranger")
    broker_access.provision_gateway(gw, "gw-password", [child])
    watch = monitor(f"fleet/v1/{child}/status", f"fleet/v1/{child}/events",
                    f"fleet/v1/{stranger}/status")
    gateway = gateway_factory(gw, "gw-password")
    ours, theirs = FakeMcu(), FakeMcu()
    gateway.serve(ours)
    gateway.serve(theirs)
    ours.boot(child)
    theirs.boot(stranger)
    batch = encode_batch(EventBatch(1, T0, 0, [Event(T0, 1, 250, 3)]))
    ours.send(link.Kind.EVENTS, batch)
    watch.collect(lambda got: len(got) >= 2)
    assert watch.on(f"fleet/v1/{child}/events") == [batch]
    status = decode_status(watch.on(f"fleet/v1/{child}/status")[0])
    assert status.state is LinkState.ONLINE and status.capabilities is not None
    refused = f"fleet/v1/{stranger}/status"
    eventually(lambda: gateway.uplink.refused[refused] >= 1)  # PUBACK 135: not its child
    assert watch.on(refused) == []

    ours.close()  # unplugged: the fleet is told at once
    watch.collect(lambda got: watch.on(f"fleet/v1/{child}/status")[-1:] == [OFFLINE_PAYLOAD])
    theirs.close()


def test_server_ota_traffic_reaches_the_mcu_clipped_and_cached(
    broker_access: DynsecAccess, gateway_factory: Callable[[str, str], RunningGateway],
    monitor: Callable[..., Any], server: Any, uid: Callable[[str], str],
) -> None:
    """Offer and unicast chunk come down; a carousel chunk answers requests from the cache."""
    gw, child = uid("gw"), uid("child")
    broker_access.provision_gateway(gw, "gw-password", [child])
    broker_access.grant_package(3, [child, gw])  # as the controller does at the offer
    watch = monitor(f"fleet/v1/{child}/ota/get", f"fleet/v1/{child}/status")
    gateway = gateway_factory(gw, "gw-password")
    mcu = FakeMcu()
    gateway.serve(mcu)
    mcu.boot(child, mtu=300)
    watch.collect(lambda got: bool(watch.on(f"fleet/v1/{child}/status")))

    server.publish(f"fleet/v1/{child}/ota/offer", b"\xd2manifest")
    assert mcu.wait_for(link.Kind.OFFER).payload == b"\xd2manifest"

    mcu.send(link.Kind.CHUNK_REQUEST, encode_chunk_request(ChunkRequest(3, 0, 512)))
    watch.collect(lambda got: bool(watch.on(f"fleet/v1/{child}/ota/get")))
    asked = decode_chunk_request(watch.on(f"fleet/v1/{child}/ota/get")[0])
    assert asked == ChunkRequest(3, 0, 300 - 16)  # clipped to what the MCU's link takes
    server.publish(f"fleet/v1/{child}/ota/chunk", encode_chunk(Chunk(3, 0, PACKAGE[:284])))
    assert decode_chunk(mcu.wait_for(link.Kind.CHUNK).payload) == Chunk(3, 0, PACKAGE[:284])

    # The carousel's 4 KiB piece arrives once; the next requests never leave the gateway.
    eventually(lambda: package_topic(3) in gateway.uplink.filters)

    def carousel_pass() -> bool:  # the carousel repeats: one pass lands once subscribed
        server.publish(package_topic(3), encode_fanout_chunk(Chunk(3, 0, PACKAGE)))
        time.sleep(0.05)
        return gateway.bridge.cache.get(3, 1000, 1) is not None

    eventually(carousel_pass)
    for offset in (284, 568):
        mcu.send(link.Kind.CHUNK_REQUEST, encode_chunk_request(ChunkRequest(3, offset, 512)))
        chunk = decode_chunk(mcu.wait_for(link.Kind.CHUNK).payload)
        assert chunk == Chunk(3, offset, PACKAGE[offset:offset + 284])
    assert len(watch.on(f"fleet/v1/{child}/ota/get")) == 1
    assert watch.probe.receive(timeout=0.3) is None  # and no ota/get came after all
    mcu.close()
