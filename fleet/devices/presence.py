"""Apply the status messages devices publish (retained, with an offline last will)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime

from django.db import transaction

from device_sdk.protocol.status import LinkState, Status
from fleet.audit.actions import record_audit
from fleet.devices.choices import DeviceState
from fleet.devices.models import Device

log = logging.getLogger(__name__)


@transaction.atomic
def apply_status(device_id: int, status: Status, received_at: datetime) -> None:
    """Record presence, capabilities and the running package a device reports.

    Presence changes are frequent and not audited; a change of firmware is.
    """
    device = Device.objects.select_for_update().filter(pk=device_id).first()
    if device is None or device.revoked:
        return
    fields = ["state", "last_seen"]
    device.state = DeviceState.ONLINE if status.state == LinkState.ONLINE else DeviceState.OFFLINE
    device.last_seen = max(device.last_seen or received_at, received_at)
    if device.first_seen is None:
        device.first_seen = received_at
        fields.append("first_seen")
    if status.capabilities is not None:
        caps = asdict(status.capabilities)
        if caps.get("firmware_version") != device.firmware_version and device.firmware_version:
            record_audit(actor=None, actor_label=f"device:{device.uid}",
                         action="device.firmware_change", obj=device,
                         before={"firmware_version": device.firmware_version},
                         after={"firmware_version": caps.get("firmware_version")})
        device.capabilities = caps
        device.firmware_version = caps.get("firmware_version", "")
        device.tflm_version = caps.get("tflm_version", "")
        fields += ["capabilities", "firmware_version", "tflm_version"]
    if status.state == LinkState.ONLINE:
        device.running_package_id = status.model or None
        fields.append("running_package_id")
    device.save(update_fields=fields)
