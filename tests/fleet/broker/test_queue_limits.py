"""Mosquitto's queue limits per session, for real: past them it drops messages for a lagging
worker *after* acknowledging them to the device (no push-back on a QoS 1 publisher), which is
why the deployed limits are sized for a worker's backlog (fleet/broker/mosquitto.py)."""

from __future__ import annotations

import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sdk.mqtt import BrokerEndpoint, connect, new_client
from fleet.broker.access import ServiceRole
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MAX_QUEUED_BYTES, MosquittoInstance

pytestmark = pytest.mark.integration

# Event batches a stalled worker falls behind by: more than Mosquitto's default queue (1,000).
BACKLOG = 1_500


def _stalled_worker_and_device(broker: MosquittoInstance) -> tuple[list[int], list[int]]:
    """A worker session that takes 5 messages and acknowledges none (stalled on its commit),
    and a device publishing BACKLOG batches at QoS 1; return (PUBACK reason codes, messages
    the worker received after it recovers and reconnects)."""
    with DynsecAccess(broker.host, broker.port, broker.admin_username,
                      broker.admin_password) as access:
        access.provision_service("w", "worker-pass", ServiceRole.WORKER)
        access.provision_device("dev-q", "device-pass")
    endpoint = BrokerEndpoint(broker.host, broker.port, tls=False)

    def worker_session(received: list[int], ack: bool) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="w",
                             protocol=mqtt.MQTTv5)
        client.username_pw_set("w", "worker-pass")
        client.manual_ack_set(True)

        def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            received.append(int(message.payload))
            if ack:
                c.ack(message.mid, message.qos)

        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval, props.ReceiveMaximum = 3600, 5
        client.connect(broker.host, broker.port, properties=props, clean_start=not ack)
        client.loop_start()
        return client

    stalled: list[int] = []
    worker = worker_session(stalled, ack=False)
    worker.subscribe("$share/g/fleet/v1/+/events", qos=1)
    time.sleep(0.5)
    reasons: list[int] = []
    device = new_client(endpoint, client_id="dev-q", username="dev-q", password="device-pass")
    device.on_publish = lambda c, u, mid, reason, props: reasons.append(reason.value)
    connect(device, endpoint, wait_s=10)
    for i in range(BACKLOG):
        device.publish("fleet/v1/dev-q/events", str(i).encode(), qos=1).wait_for_publish(10)
    device.disconnect()
    device.loop_stop()
    worker.disconnect()  # the stalled worker restarts ...
    worker.loop_stop()
    recovered: list[int] = []
    worker = worker_session(recovered, ack=True)  # ... and resumes its session
    deadline = time.monotonic() + 15
    while len(set(recovered)) < BACKLOG and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    worker.disconnect()
    worker.loop_stop()
    return reasons, sorted(set(recovered))


def test_past_its_queue_limit_mosquitto_drops_what_it_acknowledged(
        fresh_broker: MosquittoInstance) -> None:
    """With 10 queued messages allowed, every publish is acknowledged as a success, yet the
    worker never gets most of them, and the broker logs that it dropped them."""
    fresh_broker.max_queued_messages = 10
    fresh_broker.start()
    reasons, recovered = _stalled_worker_and_device(fresh_broker)
    assert reasons == [0] * BACKLOG  # no push-back on the publisher
    assert len(recovered) <= 5 + 10  # in flight + queued: the rest is gone
    assert "Outgoing messages are being dropped" in fresh_broker.log_file.read_text()


def test_the_deployed_limits_keep_a_stalled_workers_backlog(
        fresh_broker: MosquittoInstance) -> None:
    """With the deployed limits the same backlog (beyond Mosquitto's default of 1,000) waits
    for the worker: all of it arrives."""
    assert fresh_broker.max_queued_bytes == MAX_QUEUED_BYTES
    fresh_broker.start()
    reasons, recovered = _stalled_worker_and_device(fresh_broker)
    assert reasons == [0] * BACKLOG
    assert recovered == list(range(BACKLOG))
    assert "being dropped" not in fresh_broker.log_file.read_text()
