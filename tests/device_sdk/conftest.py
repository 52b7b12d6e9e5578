"""Session fixtures of the device SDK tests: real int8 models, built once per run."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from fleet.broker.access import ServiceRole
from fleet.broker.configured import reset_broker_access
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MosquittoInstance
from fleet.broker.x509 import X509Access
from testkit import model_factory
from testkit.broker import Probe, ProbeFactory, running_x509_broker
from testkit.worker import WorkerProcess, worker_env


@pytest.fixture(scope="session")
def dense_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A trained int8 16-32-4 MLP (FULLY_CONNECTED, SOFTMAX), about 3.6 KB."""
    return model_factory.dense_classifier(tmp_path_factory.mktemp("sdk-dense")).tflite


@pytest.fixture(scope="session")
def dense_model_path(dense_model: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The int8 MLP as a .tflite file."""
    path = tmp_path_factory.mktemp("sdk-model") / "dense.tflite"
    path.write_bytes(dense_model)
    return path


@pytest.fixture(scope="session")
def conv_model() -> bytes:
    """A small int8 CNN on 32x32x1 inputs with 4 classes (untrained)."""
    return model_factory.conv_model()


# -- integration: the real server (live_server) enrolling on the real broker ---------------------


@pytest.fixture
def fleet_server(
    broker: MosquittoInstance, live_server: Any, hardware_profile: Any
) -> Iterator[str]:
    """Return the URL of a live Django server whose enrollment provisions the session broker.

    Tests using it need ``@pytest.mark.django_db(transaction=True)``.
    """
    reset_broker_access()
    with override_settings(
        BROKER_ACCESS="dynsec",
        MQTT_URL=broker.url,
        MQTT_DEVICE_URL=broker.tls_url,
        MQTT_ADMIN_USERNAME=broker.admin_username,
        MQTT_ADMIN_PASSWORD=broker.admin_password,
        MQTT_CA_FILE=str(broker.ca_cert),
    ):
        yield str(live_server.url)
    reset_broker_access()


class Monitor:
    """A read-only MQTT client (the monitor service role) that collects what it receives."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.messages: list[Any] = []  # everything received so far, in order

    def collect(self, until: Callable[[list[Any]], bool], timeout: float = 15.0) -> list[Any]:
        """Receive until ``until(all messages so far)`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until(self.messages):
            left = deadline - time.monotonic()
            message = self.probe.receive(timeout=left) if left > 0 else None
            if message is None:
                raise AssertionError(f"gave up after {timeout} s: {len(self.messages)} messages")
            self.messages.append(message)
        return self.messages

    def on(self, topic: str) -> list[bytes]:
        """Return the payloads received on ``topic`` so far."""
        return [bytes(m.payload) for m in self.messages if m.topic == topic]


@pytest.fixture
def monitor(broker_access: DynsecAccess, probe: ProbeFactory) -> Callable[..., Monitor]:
    """Return a maker of monitors subscribed (QoS 1) to ``topics`` on the plain listener."""

    def make(*topics: str) -> Monitor:
        name = f"sdk-monitor-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        broker_access.provision_service(name, password, ServiceRole.MONITOR)
        watcher = probe(name, password)
        assert watcher.connect().value == 0
        for topic in topics:
            assert watcher.subscribe(topic).value == 1, f"SUBACK for {topic}"
        return Monitor(watcher)

    return make


# -- X.509 broker access: the live server, a certificate-only device listener, a real worker --


@dataclass
class X509Fleet:
    server: str
    broker: MosquittoInstance
    access: X509Access
    device_port: int


@pytest.fixture
def x509_fleet(tmp_path: Path, live_server: Any, hardware_profile: Any) -> Iterator[X509Fleet]:
    """A Mosquitto with certificate-only device access, the live server issuing the devices'
    certificates (BROKER_ACCESS=x509) and a real worker storing what devices send. Serial
    gateways are handed the broker's TLS password listener (MQTT_GATEWAY_URL)."""
    tmp_path.chmod(0o755)  # the broker's user reads the CA, CRL and ACL files
    pki = tmp_path / "pki"
    with running_x509_broker(tmp_path / "broker", pki) as running:
        broker, access, device_port = running.instance, running.access, running.device_port
        worker_user, worker_password = "x509-worker", secrets.token_urlsafe(16)
        access.provision_service(worker_user, worker_password, ServiceRole.WORKER)
        env = worker_env(broker, worker_user, worker_password, "x509-ingest", tmp_path / "wvar")
        env.update({"BROKER_ACCESS": "x509", "BROKER_X509_DIR": str(pki),
                    "BROKER_PID_FILE": str(broker.pid_file)})
        (tmp_path / "wvar").mkdir()
        worker = WorkerProcess("x509-w", env, tmp_path / "worker.log", broker)
        settings = {"BROKER_ACCESS": "x509", "BROKER_X509_DIR": pki,
                    "BROKER_PID_FILE": broker.pid_file, "MQTT_URL": broker.url,
                    "MQTT_DEVICE_URL": f"mqtts://127.0.0.1:{device_port}",
                    "MQTT_GATEWAY_URL": broker.tls_url,
                    "MQTT_ADMIN_USERNAME": broker.admin_username,
                    "MQTT_ADMIN_PASSWORD": broker.admin_password,
                    "MQTT_CA_FILE": str(broker.ca_cert)}
        reset_broker_access()
        try:
            with override_settings(**settings):
                worker.start()
                yield X509Fleet(str(live_server.url), broker, access, device_port)
        finally:
            worker.stop()
            reset_broker_access()
