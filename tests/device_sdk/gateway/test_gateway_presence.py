"""The gateway's own presence: a last will on ``fleet/v1/{gateway}/status`` and an online status.

From the codec (the device status, naming no model) to the broker (the gateway's role grants
that one publish and nothing more; Mosquitto sends the will when the connection drops without
a DISCONNECT) to the fleet: the real worker marks the children of a gateway killed with
SIGKILL offline, and a restarted gateway comes back online.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from device_sdk.gateway.presence import GatewayPresence, gateway_status_topic
from device_sdk.gateway.uplink import Uplink
from device_sdk.protocol import link
from device_sdk.protocol.reasons import ProtocolError
from device_sdk.protocol.status import OFFLINE_PAYLOAD, LinkState, decode_status
from fleet.broker.dynsec import DynsecAccess, gateway_role
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.choices import DeviceState
from fleet.devices.models import Device, Gateway, HardwareProfile
from testkit.broker import ProbeFactory
from testkit.worker import WorkerFactory
from tests.device_sdk.gateway.fake_mcu import FakeMcu, online_status

NOT_AUTHORIZED = 135
Uid = Callable[[str], str]


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.05)
    return result


# -- the status itself ---------------------------------------------------------------------------


def test_the_online_status_is_a_device_status_naming_no_model() -> None:
    """Any reader of fleet/v1/+/status decodes it; the will is the devices' 8-byte payload."""
    presence = GatewayPresence("gw-lab-1")
    assert presence.topic == gateway_status_topic("gw-lab-1") == "fleet/v1/gw-lab-1/status"
    assert presence.offline == OFFLINE_PAYLOAD
    status = decode_status(presence.online())
    assert status.state is LinkState.ONLINE and status.model is None
    assert (status.slot, status.seq) == (0, 0) and status.uptime_s is not None
    caps = status.capabilities
    assert caps is not None and caps.firmware_version.startswith("device_sdk-gateway ")
    assert (caps.ops, caps.arena_bytes, caps.slot_bytes) == ([], 0, 0)


def test_a_gateway_id_that_cannot_name_a_topic_is_refused() -> None:
    """The CLI turns this into exit status 1 before it opens a port."""
    for bad in ("pkg", "gw/1", "gw+", ""):
        with pytest.raises(ProtocolError):
            GatewayPresence(bad)


# -- the broker ----------------------------------------------------------------------------------


def test_the_gateway_role_publishes_its_own_status_and_nothing_else(
    broker_access: DynsecAccess, probe: ProbeFactory, monitor: Callable[..., Any], uid: Uid,
) -> None:
    """Own status: yes. Its other leaves, other devices, subscribing to itself: 135."""
    gw, child, other = uid("gw"), uid("child"), uid("other")
    broker_access.provision_device(other, "other-pw")
    broker_access.provision_gateway(gw, "gw-pw", [child])
    gateway = probe(gw, "gw-pw")
    assert gateway.connect().value == 0
    assert not gateway.publish(f"fleet/v1/{gw}/status", OFFLINE_PAYLOAD, retain=True).is_failure
    for topic in (f"fleet/v1/{gw}/events", f"fleet/v1/{gw}/ota/report", f"fleet/v1/{gw}/ota/get",
                  f"fleet/v1/{other}/status", f"fleet/v1/{other}/events", "fleet/v1/pkg/1/chunk"):
        assert gateway.publish(topic).value == NOT_AUTHORIZED, topic
    for topic in (f"fleet/v1/{gw}/status", f"fleet/v1/{gw}/ota/offer", f"fleet/v1/{other}/#"):
        assert gateway.subscribe(topic).is_failure, topic
    assert not gateway.publish(f"fleet/v1/{child}/status", OFFLINE_PAYLOAD).is_failure
    # The device's role is as it was: its own subtree, nothing of the gateway's.
    device = probe(other, "other-pw")
    assert device.connect().value == 0
    assert not device.publish(f"fleet/v1/{other}/status").is_failure
    assert device.publish(f"fleet/v1/{gw}/status").value == NOT_AUTHORIZED
    broker_access.revoke_device(gw)
    broker_access.revoke_device(other)


def test_only_its_own_will_is_sent_and_old_gateways_get_the_grant_with_a_child(
    broker_access: DynsecAccess, probe: ProbeFactory, monitor: Callable[..., Any], uid: Uid,
) -> None:
    """Mosquitto checks a will against the ACL when it sends it: another device's is dropped,
    and so is a gateway's own until its role grants it (add_gateway_children adds it)."""
    gw, child, other = uid("gw"), uid("child"), uid("other")
    broker_access.provision_gateway(gw, "gw-pw", [child])
    watch = monitor(f"fleet/v1/{gw}/status", f"fleet/v1/{other}/status")

    def crash_with_will(topic: str) -> None:
        gateway = probe(gw, "gw-pw")
        gateway.client.will_set(topic, OFFLINE_PAYLOAD, qos=1, retain=True)
        assert gateway.connect().value == 0
        gateway.client.socket().shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the will goes
        assert gateway.disconnected.wait(5)

    crash_with_will(f"fleet/v1/{other}/status")
    crash_with_will(f"fleet/v1/{gw}/status")
    watch.collect(lambda got: bool(watch.on(f"fleet/v1/{gw}/status")))
    assert watch.on(f"fleet/v1/{other}/status") == []

    # A gateway provisioned before gateways had a will: its role list lacks its own role.
    broker_access._run([{"command": "removeClientRole", "username": gw,
                         "rolename": gateway_role(gw)}])
    crash_with_will(f"fleet/v1/{gw}/status")
    assert watch.probe.receive(timeout=1.0) is None  # dropped without a word
    broker_access.add_gateway_children(gw, [child])  # held already: only its own role is new
    crash_with_will(f"fleet/v1/{gw}/status")
    watch.collect(lambda got: len(watch.on(f"fleet/v1/{gw}/status")) == 2)
    broker_access.revoke_device(gw)
    # Revoking took the gateway's own role with it: provisioning again makes it anew.
    [answer] = broker_access._run([{"command": "getRole", "rolename": gateway_role(gw)}],
                                  benign=("not found",))
    assert "not found" in answer.get("error", "")


def test_a_dropped_connection_sends_the_will_and_the_reconnect_the_online_status(
    broker: MosquittoInstance, broker_access: DynsecAccess, monitor: Callable[..., Any],
    uid: Uid,
) -> None:
    """The Uplink's will, retained: offline when the network drops, online again on reconnect,
    offline when it stops cleanly (a clean DISCONNECT discards the will)."""
    gw = uid("gw")
    topic = f"fleet/v1/{gw}/status"
    broker_access.provision_gateway(gw, "gw-pw", [])
    watch = monitor(topic)
    uplink = Uplink(broker.tls_url, gw, "gw-pw", ca_pem=broker.ca_cert.read_text(),
                    presence=GatewayPresence(gw))
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        watch.collect(lambda got: len(watch.on(topic)) == 1)
        assert decode_status(watch.on(topic)[0]).state is LinkState.ONLINE
        uplink.client.socket().shutdown(socket.SHUT_RDWR)  # the cable is cut
        watch.collect(lambda got: len(watch.on(topic)) == 3)
        states = [decode_status(p).state for p in watch.on(topic)]
        assert states == [LinkState.ONLINE, LinkState.OFFLINE, LinkState.ONLINE]
        assert watch.on(topic)[1] == OFFLINE_PAYLOAD
        assert uplink.counters["connects"] == 2 and uplink.counters["status_refused"] == 0
    finally:
        uplink.stop()
    watch.collect(lambda got: watch.on(topic)[-1:] == [OFFLINE_PAYLOAD])
    late = monitor(topic)  # the broker keeps it: a late subscriber learns the gateway is gone
    late.collect(lambda got: late.on(topic) == [OFFLINE_PAYLOAD])
    broker_access.revoke_device(gw)


# -- the fleet: real worker, gateway program, SIGKILL -------------------------------------------


def presence_of(*uids: str) -> list[tuple[str, datetime | None]]:
    rows = {u: (s, t) for u, s, t in Device.objects.filter(uid__in=uids).values_list(
        "uid", "state", "last_seen")}
    rows.update((u, (s, t)) for u, s, t in Gateway.objects.filter(uid__in=uids).values_list(
        "uid", "state", "last_seen"))
    return [rows[u] for u in uids]


def states_of(*uids: str) -> list[str]:
    return [state for state, _ in presence_of(*uids)]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_killed_gateway_takes_its_children_offline_and_comes_back_online(
    broker: MosquittoInstance, broker_access: DynsecAccess, worker_factory: WorkerFactory,
    gateway_process: Callable[..., subprocess.Popen[str]], hardware_profile: HardwareProfile,
    uid: Uid, tmp_path: Path,
) -> None:
    """SIGKILL: both children offline in the database within seconds (the gateway's will);
    restart: the gateway online again, each child as its MCU answers; SIGTERM: all offline."""
    gw, c1, c2 = uid("gw"), uid("mcu1"), uid("mcu2")
    children = [Device.objects.create(uid=c, hardware_profile=hardware_profile,
                                      public_key_pem="-", public_key_fingerprint=c,
                                      key_algorithm="ed25519") for c in (c1, c2)]
    Gateway.objects.create(uid=gw).children.set(children)
    password = secrets.token_urlsafe(16)
    broker_access.provision_gateway(gw, password, [c1, c2])
    worker_factory(broker)
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"uid": gw, "mqtt": {
        "url": broker.tls_url, "username": gw, "credential": password,
        "ca_cert": broker.ca_cert.read_text()}}))
    config.chmod(0o600)
    mcus = [FakeMcu(reconnects=True), FakeMcu(reconnects=True)]
    everyone = (gw, c1, c2)
    args = [*(arg for mcu in mcus for arg in ("--port", mcu.url)), "--config", str(config)]

    process = gateway_process(*args)
    for mcu, child in zip(mcus, (c1, c2)):
        mcu.wait_connected()
        mcu.boot(child)
    eventually(lambda: states_of(*everyone) == [DeviceState.ONLINE] * 3, 20, "all online")

    before_kill = timezone.now()
    process.kill()  # SIGKILL: no DISCONNECT, no offline status for anyone
    process.wait(5)
    killed = time.monotonic()
    eventually(lambda: states_of(*everyone) == [DeviceState.OFFLINE] * 3, 10,
               "gateway and children offline")
    print(f"\nchildren offline {time.monotonic() - killed:.2f} s after SIGKILL")
    for _, last_seen in presence_of(*everyone):
        assert last_seen is not None and last_seen >= before_kill

    for mcu in mcus:
        mcu.disconnected()
    process = gateway_process(*args)
    eventually(lambda: states_of(gw) == [DeviceState.ONLINE], 15, "gateway online again")
    assert states_of(c1, c2) == [DeviceState.OFFLINE] * 2  # until their MCUs talk again
    for mcu in mcus:  # the gateway remembers each port's MCU and asks it for its status
        mcu.wait_connected()
        mcu.wait_for(link.Kind.STATUS_REQUEST)
        mcu.send(link.Kind.STATUS, online_status())
    eventually(lambda: states_of(*everyone) == [DeviceState.ONLINE] * 3, 15, "all back online")

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    eventually(lambda: states_of(*everyone) == [DeviceState.OFFLINE] * 3, 10,
               "all offline after a clean stop")
    for mcu in mcus:
        mcu.close()
    broker_access.revoke_device(gw)
