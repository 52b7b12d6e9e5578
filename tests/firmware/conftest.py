"""Fixtures of the end-to-end tests on an emulated MCU (their helpers are in mcu_lab.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from fleet.broker.configured import reset_broker_access
from fleet.broker.mosquitto import MosquittoInstance
from tests.firmware.mcu_lab import Logs, Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Collect subprocesses (QEMU, the gateway) and stop them at teardown."""
    made: list[subprocess.Popen[bytes]] = []
    logs = Logs()
    yield made, logs
    for process in reversed(made):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture
def fleet(broker: MosquittoInstance, live_server: Any, hardware_profile: Any) -> Iterator[str]:
    """Point the live server at the session broker; return its URL."""
    reset_broker_access()
    with override_settings(
        BROKER_ACCESS="dynsec", MQTT_URL=broker.url, MQTT_DEVICE_URL=broker.tls_url,
        MQTT_ADMIN_USERNAME=broker.admin_username, MQTT_ADMIN_PASSWORD=broker.admin_password,
        MQTT_CA_FILE=str(broker.ca_cert),
    ):
        yield str(live_server.url)
    reset_broker_access()
