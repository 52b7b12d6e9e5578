"""A device's status on the database: presence, running package and capabilities.

The first status of every connection carries the capabilities; later ones leave them out,
which means "unchanged". ``apply_status`` directly, then through the worker's status consumer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from device_sdk.protocol.status import (
    OFFLINE_PAYLOAD,
    Capabilities,
    LinkState,
    Status,
    encode_status,
    parse_capabilities,
)
from fleet.audit.models import AuditLog
from fleet.devices.choices import DeviceState
from fleet.devices.models import Device, HardwareProfile
from fleet.devices.presence import apply_status
from fleet.intake.consumers import Consumers
from fleet.intake.worker import Received
from tests.conftest import CAPABILITIES
from tests.fleet.devices.conftest import make_device

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NEW_FIRMWARE = parse_capabilities({**CAPABILITIES, "firmware_version": "1.5.0",
                                   "ops": ["CONV_2D", "SOFTMAX"]})


def online(model: int | None, capabilities: Capabilities | None = None) -> Status:
    return Status(LinkState.ONLINE, model=model, slot=0, uptime_s=5, free_ram=1024, seq=1,
                  capabilities=capabilities)


@pytest.fixture
def device(hardware_profile: HardwareProfile) -> Device:
    """Return a device as enrollment leaves it: capabilities stored, never seen."""
    return make_device(hardware_profile)


def stored(device: Device) -> tuple[object, ...]:
    device.refresh_from_db()
    return (device.capabilities, device.firmware_version, device.tflm_version)


@pytest.mark.django_db
def test_a_status_without_capabilities_keeps_the_stored_ones(device: Device) -> None:
    """Presence and the running package follow the status; the enrolled capabilities stay."""
    before = stored(device)
    apply_status(device.pk, online(7), T0)
    assert stored(device) == before
    assert (device.state, device.last_seen, device.first_seen) == (DeviceState.ONLINE, T0, T0)
    assert device.running_package_id == 7

    apply_status(device.pk, online(9), T0 + timedelta(seconds=3))  # the model switch after OTA
    assert stored(device) == before
    assert (device.running_package_id, device.last_seen) == (9, T0 + timedelta(seconds=3))
    assert not AuditLog.objects.filter(action="device.firmware_change").exists()


@pytest.mark.django_db
def test_capabilities_a_status_carries_replace_the_stored_ones_until_the_next_carry_them(
    device: Device,
) -> None:
    """New firmware reports itself on its connection's first status (audited); the statuses
    after it, without capabilities, do not undo that nor clear anything."""
    apply_status(device.pk, online(7, NEW_FIRMWARE), T0)
    expected = ({**CAPABILITIES, "firmware_version": "1.5.0", "ops": ["CONV_2D", "SOFTMAX"]},
                "1.5.0", CAPABILITIES["tflm_version"])
    assert stored(device) == expected
    change = AuditLog.objects.get(action="device.firmware_change")
    assert (change.before, change.after) == ({"firmware_version": "1.4.0"},
                                             {"firmware_version": "1.5.0"})

    apply_status(device.pk, online(8), T0 + timedelta(seconds=1))
    assert stored(device) == expected
    assert device.running_package_id == 8


@pytest.mark.django_db(transaction=True)  # the consumers close stale connections first
def test_the_status_consumer_applies_both_forms(device: Device) -> None:
    """Through the worker's consumer: a full status, a lean one, the last will."""
    consumers = Consumers()
    topic = f"fleet/v1/{device.uid}/status"
    full = encode_status(online(7, NEW_FIRMWARE))
    lean = encode_status(online(9))
    consumers([Received(topic, full, 1, 1, T0)])
    consumers([Received(topic, lean, 1, 1, T0 + timedelta(seconds=1))])
    assert stored(device)[1] == "1.5.0"
    assert (device.state, device.running_package_id) == (DeviceState.ONLINE, 9)
    consumers([Received(topic, OFFLINE_PAYLOAD, 1, 1, T0 + timedelta(seconds=2))])
    assert stored(device)[0]["ops"] == ["CONV_2D", "SOFTMAX"]
    assert (device.state, device.running_package_id) == (DeviceState.OFFLINE, 9)
    assert consumers.counters["status_applied"] == 3
