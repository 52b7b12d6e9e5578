"""Put a fleet worker together from the settings: MQTT side, consumers, OTA delivery."""

from __future__ import annotations

from django.conf import settings

from device_sdk.protocol.topics import Channel
from fleet.intake.consumers import Consumers
from fleet.intake.deployments import DeploymentConsumers
from fleet.intake.worker import MqttWorker, WorkerConfig
from ota.rollouts.delivery import OtaDelivery


def build_worker(name: str, *, reconnect: bool = True) -> tuple[MqttWorker, Consumers,
                                                                  OtaDelivery]:
    """Return a worker (not started) under the client id ``name``, its consumers and delivery.

    The command's own worker and a drainer (a dead peer's name, ``reconnect=False``) are built
    the same way, so a drained session's messages are handled exactly as its worker would have.
    """
    consumers = Consumers()
    worker = MqttWorker(
        WorkerConfig(
            mqtt_url=settings.MQTT_URL, username=settings.MQTT_WORKER_USERNAME,
            password=settings.MQTT_WORKER_PASSWORD, name=name,
            group=settings.MQTT_WORKER_GROUP, ca_certs=settings.MQTT_CA_FILE or None,
        ),
        consumers, reconnect=reconnect,
    )
    # The carousel serves the rollouts whose lease this worker holds: one sender per package.
    delivery = OtaDelivery(worker, consumers.counters, owner=name)
    deployments = DeploymentConsumers(delivery, consumers.directory)
    consumers.register(Channel.OTA_GET, deployments.consume_chunk_requests)
    consumers.register(Channel.OTA_REPORT, deployments.consume_reports)
    return worker, consumers, delivery
