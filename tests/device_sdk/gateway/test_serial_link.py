"""The serial side: pyserial ``socket://`` ports, the link endpoint, liveness and port memory.

A fake MCU (the link framing over TCP, as QEMU's UART) is on the other end; a recording
uplink stands in for MQTT.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device_sdk.gateway.bridge import Bridge
from device_sdk.gateway.serial_link import PortMemory, SerialChild
from device_sdk.protocol import link
from device_sdk.protocol.events import Event, EventBatch, encode_batch
from device_sdk.protocol.status import OFFLINE_PAYLOAD, LinkState, decode_status
from tests.device_sdk.gateway.fake_mcu import FakeMcu, online_status
from tests.device_sdk.gateway.test_bridge import RecordingUplink

T0 = 1_767_225_600_000


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def serve(mcu: FakeMcu, bridge: Bridge, stop: threading.Event, **kwargs: object) -> SerialChild:
    port = SerialChild(mcu.url, bridge, stop, reopen_s=(0.1, 0.5), **kwargs)  # type: ignore[arg-type]
    port.start()
    mcu.wait_connected()
    return port


def test_frames_travel_both_ways_over_a_socket_port(stop: threading.Event) -> None:
    """HELLO, status and events go up; the time comes down; a closed port means offline."""
    uplink = RecordingUplink()
    bridge = Bridge(uplink)
    mcu = FakeMcu()
    port = serve(mcu, bridge, stop)
    mcu.boot("mcu-a")
    assert link.Kind.TIME == mcu.wait_for(link.Kind.TIME).kind
    batch = encode_batch(EventBatch(1, T0, 0, [Event(T0, 3, 99, 2)]))
    mcu.send(link.Kind.EVENTS, batch)
    eventually(lambda: uplink.on("fleet/v1/mcu-a/events") == [batch])
    assert uplink.on("fleet/v1/mcu-a/status") == [online_status()]
    mcu.close()
    eventually(lambda: uplink.on("fleet/v1/mcu-a/status")[-1:] == [OFFLINE_PAYLOAD])
    assert port.endpoint.decoder.bad == 0


def test_a_silent_link_is_probed_then_published_offline_then_back(stop: threading.Event) -> None:
    """Keepalive TIME frames probe a quiet MCU; no answer: offline; an answer: status again."""
    uplink = RecordingUplink()
    bridge = Bridge(uplink)
    mcu = FakeMcu()
    serve(mcu, bridge, stop, keepalive_s=0.3, offline_s=1.0)
    mcu.boot("mcu-b")
    mcu.wait_for(link.Kind.TIME)
    mcu.wait_for(link.Kind.TIME, timeout=2)  # a keepalive: the link was quiet 0.3 s
    mcu.mute = True
    eventually(lambda: uplink.on("fleet/v1/mcu-b/status")[-1:] == [OFFLINE_PAYLOAD])
    mcu.mute = False
    mcu.wait_for(link.Kind.STATUS_REQUEST, timeout=5)  # it answered: ask who it is now
    mcu.send(link.Kind.STATUS, online_status(model=4))
    eventually(lambda: decode_status(uplink.on("fleet/v1/mcu-b/status")[-1]).model == 4)
    assert decode_status(uplink.on("fleet/v1/mcu-b/status")[-1]).state is LinkState.ONLINE
    mcu.close()


def test_a_restarted_gateway_remembers_who_was_on_the_port(
    tmp_path: Path, stop: threading.Event
) -> None:
    """An MCU says HELLO only at boot: the gateway keeps the port's uid in its state dir."""
    memory = PortMemory(tmp_path)
    first = FakeMcu()
    uplink = RecordingUplink()
    serve(first, Bridge(uplink), stop, memory=memory)
    first.boot("mcu-c")
    eventually(lambda: uplink.on("fleet/v1/mcu-c/status") == [online_status()])
    stop.set()  # the gateway stops; the MCU keeps running (same TCP port, new connection)
    eventually(lambda: uplink.on("fleet/v1/mcu-c/status")[-1] == OFFLINE_PAYLOAD)
    first.close()

    again = threading.Event()
    try:
        second = FakeMcu(port=first.port)
        uplink = RecordingUplink()
        serve(second, Bridge(uplink), again, memory=PortMemory(tmp_path))
        second.wait_for(link.Kind.STATUS_REQUEST)
        second.send(link.Kind.STATUS, online_status(model=5))
        eventually(lambda: uplink.on("fleet/v1/mcu-c/status") == [online_status(model=5)])
        second.close()
    finally:
        again.set()
