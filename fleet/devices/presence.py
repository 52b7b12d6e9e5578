"""Apply the status messages devices and serial gateways publish (retained, with an offline
last will).

A device's status is its own. A gateway's MCUs (its children) cannot speak to the broker: the
gateway publishes their statuses on their behalf, so when the gateway's host dies nobody would
publish them offline. The gateway therefore has a status of its own, on the device status
topic under its uid (``fleet/v1/{gateway}/status``, the same codec), whose last will is the
offline status; :func:`apply_gateway_status` turns that will into the children's presence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Q

from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.status import LinkState, Status
from fleet.audit.actions import record_audit
from fleet.devices.capabilities import capability_issues
from fleet.devices.choices import DeviceState
from fleet.devices.models import Device, Gateway

log = logging.getLogger(__name__)


# What a status may change on a device row; a batch reads these (and the profile) only.
_STATUS_FIELDS = ("uid", "revoked_at", "state", "last_seen", "first_seen", "capabilities",
                  "firmware_version", "tflm_version", "capability_issues", "running_package_id",
                  "trusted_kids", "hardware_profile")
# Read when no status of the batch carries capabilities: the rest of what a status sets is
# written without being read.
_PRESENCE_FIELDS = ("uid", "revoked_at", "state", "last_seen", "first_seen")
_WRITE_ROWS = 1000  # devices per UPDATE statement


def apply_status(device_id: int, status: Status, received_at: datetime) -> None:
    """Record presence, capabilities and the running package a device reports.

    A status without capabilities (every one but the first of a connection) means they are
    unchanged: the stored ones, from enrollment or an earlier status, stay as they are.
    Presence changes are frequent and not audited; a change of firmware is.
    """
    apply_statuses([(device_id, status, received_at)])


@transaction.atomic
def apply_statuses(statuses: Sequence[tuple[int, Status, datetime]]) -> None:
    """Apply ``(device id, status, received at)`` in order, as :func:`apply_status` one at a
    time would, in one transaction: one locked read of the devices concerned, the rules run
    on the rows in memory (several statuses of one device see each other), one UPDATE per
    set of changed columns. Unknown and revoked devices are skipped.

    Statuses come in thousands at once (a fleet connecting, a wave activating its model):
    two statements per status were the worker's largest cost in a rollout.
    """
    if not statuses:
        return
    # Locked in one order (by pk), so two workers applying overlapping batches cannot deadlock.
    # NO KEY UPDATE: a status changes no key, and a rollout inserting deployments for these
    # devices (a foreign-key KEY SHARE lock, taken in uid order) must not wait on it.
    rows = Device.objects.select_for_update(no_key=True, of=("self",))
    if any(status.capabilities is not None for _, status, _ in statuses):
        rows = rows.select_related("hardware_profile").only(*_STATUS_FIELDS)
    else:  # presence only (a wave's statuses after activation): its fields are only written
        rows = rows.only(*_PRESENCE_FIELDS)
    devices = {d.pk: d for d in rows.filter(pk__in={device_id for device_id, _, _ in statuses})
               .order_by("pk")}
    changed: dict[int, set[str]] = {}
    for device_id, status, received_at in statuses:
        device = devices.get(device_id)
        if device is None or device.revoked:
            continue
        changed.setdefault(device_id, set()).update(_apply(device, status, received_at))
    by_fields: dict[tuple[str, ...], list[Device]] = {}
    for device_id, fields in changed.items():
        by_fields.setdefault(tuple(sorted(fields)), []).append(devices[device_id])
    for fields, rows in by_fields.items():
        _update_rows(rows, fields)


def _apply(device: Device, status: Status, received_at: datetime) -> list[str]:
    """Apply one status to ``device`` in memory (audit entries written); return the fields
    it set."""
    fields = ["state", "last_seen"]
    device.state = DeviceState.ONLINE if status.state == LinkState.ONLINE else DeviceState.OFFLINE
    device.last_seen = max(device.last_seen or received_at, received_at)
    if device.first_seen is None:
        device.first_seen = received_at
        fields.append("first_seen")
    if status.capabilities is not None:  # None: unchanged, never a reason to clear them
        caps = asdict(status.capabilities)
        if caps.get("firmware_version") != device.firmware_version and device.firmware_version:
            record_audit(actor=None, actor_label=f"device:{device.uid}",
                         action="device.firmware_change", obj=device,
                         before={"firmware_version": device.firmware_version},
                         after={"firmware_version": caps.get("firmware_version")})
        device.capabilities = caps
        device.firmware_version = caps.get("firmware_version", "")
        device.tflm_version = caps.get("tflm_version", "")
        issues = capability_issues(device.hardware_profile, caps)
        if issues != device.capability_issues:
            record_audit(actor=None, actor_label=f"device:{device.uid}",
                         action="device.capability_issues", obj=device,
                         before={"issues": device.capability_issues}, after={"issues": issues})
        device.capability_issues = issues
        fields += ["capabilities", "firmware_version", "tflm_version", "capability_issues"]
    if status.state == LinkState.ONLINE:
        device.running_package_id = status.model or None
        fields.append("running_package_id")
    if status.keys is not None:  # None: not reported (older firmware), never a reason to clear
        device.trusted_kids = sorted(kid.hex() for kid in status.keys)
        fields.append("trusted_kids")
    return fields


def _update_rows(rows: list[Device], fields: Sequence[str]) -> None:
    """Write ``fields`` of ``rows``, each row its own values, in a few statements.

    PostgreSQL: ``UPDATE ... FROM (VALUES ...)``, one statement per ``_WRITE_ROWS`` rows.
    Elsewhere Django's ``bulk_update`` (a CASE per column: its cost grows with the square of
    the rows per statement, hence the small batches).
    """
    if connection.vendor != "postgresql":
        Device.objects.bulk_update(rows, list(fields), batch_size=100)
        return
    meta = Device._meta
    pk = meta.pk
    columns = [meta.get_field(name) for name in fields]
    qn = connection.ops.quote_name
    casts = "(" + ", ".join(f"%s::{f.db_type(connection)}" for f in (pk, *columns)) + ")"
    assignments = ", ".join(f"{qn(f.column)} = v.{qn(f.column)}" for f in columns)
    names = ", ".join(qn(f.column) for f in (pk, *columns))
    with connection.cursor() as cursor:
        for start in range(0, len(rows), _WRITE_ROWS):
            chunk = rows[start:start + _WRITE_ROWS]
            params: list[object] = []
            for row in chunk:
                params.append(row.pk)
                params += [f.get_db_prep_save(getattr(row, f.attname), connection)
                           for f in columns]
            cursor.execute(
                f"UPDATE {qn(meta.db_table)} AS t SET {assignments} "
                f"FROM (VALUES {', '.join([casts] * len(chunk))}) AS v({names}) "
                f"WHERE t.{qn(pk.column)} = v.{qn(pk.column)}", params)


@dataclass(frozen=True)
class GatewayStatusApplied:
    """What applying one status of a gateway changed."""

    uid: str
    state: DeviceState  # the gateway's state after the status (unchanged when ``stale``)
    children_offline: tuple[str, ...] = ()  # children marked offline, by uid
    stale: bool = False  # older than the presence already recorded: nothing changed


@transaction.atomic
def apply_gateway_status(uid: str, status: Status, received_at: datetime
                         ) -> GatewayStatusApplied | None:
    """Record a serial gateway's own presence; when it goes offline, so do its children.

    Online: the gateway's ``state`` and ``last_seen`` only. Its children come back through
    their own statuses, which the gateway publishes when their MCUs talk again.

    Offline (its last will after a crash, or the status it sends when it stops): in the same
    transaction, every child whose presence came through this gateway is marked offline, its
    ``last_seen`` moved to ``received_at``. Those are the gateway's children still online
    that no other online gateway holds (the broker does not say who published a child's
    status, so a child another live gateway also speaks for may be there and is left alone;
    it follows that gateway), and whose last status is not newer than this one (a status the
    child sent through a restarted gateway, applied first by another worker, stays). Other
    subscribers learn it from the gateway's retained offline status itself: the server may
    not publish on a device's status topic, so a child's retained status is left as it was.

    A status received before the gateway's recorded ``last_seen`` is stale (several workers
    may apply a gateway's will and its next online status out of order) and changes nothing.
    Return None when ``uid`` names no gateway; raise ProtocolError (UNKNOWN_DEVICE) for a
    revoked one, whose status must be refused.
    """
    gateway = Gateway.objects.select_for_update().filter(uid=uid).first()
    if gateway is None:
        return None
    if gateway.revoked:
        raise ProtocolError(Reason.UNKNOWN_DEVICE, f"gateway {uid} revoked")
    if gateway.last_seen is not None and received_at < gateway.last_seen:
        return GatewayStatusApplied(uid, DeviceState(gateway.state), stale=True)
    online = status.state == LinkState.ONLINE
    gateway.state = DeviceState.ONLINE if online else DeviceState.OFFLINE
    gateway.last_seen = received_at
    gateway.save(update_fields=["state", "last_seen"])
    if online:
        return GatewayStatusApplied(uid, DeviceState.ONLINE)

    gone = take_gateway_children_offline(gateway, received_at)
    return GatewayStatusApplied(uid, DeviceState.OFFLINE, gone)


def take_gateway_children_offline(gateway: Gateway, at: datetime) -> tuple[str, ...]:
    """Mark offline, at ``at``, every child whose presence came through ``gateway``; return
    their uids.

    Those are its children still online that no other online gateway holds, and whose last
    status is not newer than ``at`` (see :func:`apply_gateway_status`). Call it inside the
    transaction that holds the gateway's row lock: when its will arrives, and when the server
    itself cuts the gateway off (revoked, or re-provisioned with a new password), since the
    broker sends no will for an administrative disconnect.
    """
    other_online = Gateway.objects.filter(state=DeviceState.ONLINE,
                                          revoked_at__isnull=True).exclude(pk=gateway.pk)
    candidates = list(
        gateway.children.filter(state=DeviceState.ONLINE, revoked_at__isnull=True)
        .exclude(gateways__in=other_online)
        .values_list("pk", flat=True)
    )
    # Locked in one order (by pk), so two gateways going offline together cannot deadlock.
    children = list(
        Device.objects.select_for_update(no_key=True)
        .filter(pk__in=candidates, state=DeviceState.ONLINE)
        .filter(Q(last_seen__isnull=True) | Q(last_seen__lte=at))
        .order_by("pk")
    )
    for child in children:
        child.state = DeviceState.OFFLINE
        child.last_seen = at
    Device.objects.bulk_update(children, ["state", "last_seen"])
    if children:
        log.info("gateway %s gone: children %s marked offline", gateway.uid,
                 ", ".join(c.uid for c in children))
    return tuple(c.uid for c in children)
