"""Statuses applied a batch at a time (``apply_statuses``, the worker's status consumer) leave
exactly what applying them one by one leaves: rows, audit entries, refusals.

A fleet connecting, or a wave activating its model, sends thousands of statuses at once; the
worker applies each batch with one locked read and a few writes. These tests pin the
semantics of one-at-a-time application on mixed batches: unknown and revoked devices,
several statuses of one device (in order: the last sets the state, ``last_seen`` never goes
back), capability changes audited one by one, and a gateway's will between its children's
statuses.
"""

from __future__ import annotations

import random
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

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
from fleet.devices.models import Device, Gateway, HardwareProfile
from fleet.devices.presence import apply_status, apply_statuses
from fleet.intake.consumers import Consumers
from fleet.intake.worker import Received
from fleet.telemetry.models import DeadLetter
from tests.conftest import CAPABILITIES
from tests.fleet.devices.conftest import make_device

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def firmware(profile: HardwareProfile, version: str, **changes: object) -> Capabilities:
    """Capabilities of firmware ``version`` that fit ``profile`` but for ``changes``."""
    return parse_capabilities({**CAPABILITIES, "firmware_version": version,
                               "ops": list(profile.supported_ops),
                               "arena_bytes": profile.arena_ram_bytes,
                               "slot_bytes": profile.model_slot_bytes, **changes})

ROW = ("state", "last_seen", "first_seen", "capabilities", "firmware_version", "tflm_version",
       "capability_issues", "running_package_id", "trusted_kids", "revoked_at")


def online(model: int | None, caps: Capabilities | None = None,
           keys: tuple[bytes, ...] | None = None) -> Status:
    return Status(LinkState.ONLINE, model=model, slot=0, uptime_s=5, free_ram=1024, seq=1,
                  capabilities=caps, keys=keys)


OFFLINE = Status(LinkState.OFFLINE)


def rows(devices: list[Device]) -> list[tuple[object, ...]]:
    return list(Device.objects.filter(pk__in=[d.pk for d in devices]).order_by("pk")
                .values_list(*ROW))


def audits() -> list[tuple[object, ...]]:
    return list(AuditLog.objects.order_by("id").values_list("action", "object_id", "before",
                                                            "after", "actor_label"))


def status_msg(device: Device | str, status: Status | bytes, at: datetime) -> Received:
    uid = device if isinstance(device, str) else device.uid
    payload = status if isinstance(status, bytes) else encode_status(status)
    return Received(f"fleet/v1/{uid}/status", payload, 1, 1, at)


@pytest.mark.django_db
def test_several_statuses_of_a_device_apply_in_order(hardware_profile: HardwareProfile) -> None:
    """In one batch: new firmware, a lean status after the model switch, an older status
    received late, then the will. The state is the last one's, ``last_seen`` the newest,
    ``first_seen`` the first, the running package the last online status's, and each
    capability change is audited against the one before it."""
    device = make_device(hardware_profile)
    kid = bytes.fromhex("0011223344556677")
    apply_statuses([
        (device.pk, online(7, firmware(hardware_profile, "1.5.0")), T0),
        (device.pk, online(9, keys=(kid,)), T0 + timedelta(seconds=3)),
        (device.pk, online(8, firmware(hardware_profile, "1.6.0", arena_bytes=1024)),
         T0 + timedelta(seconds=1)),  # late, older
        (device.pk, OFFLINE, T0 + timedelta(seconds=2)),
    ])
    row = dict(zip(ROW, rows([device])[0], strict=True))
    assert row["state"] == DeviceState.OFFLINE
    assert (row["last_seen"], row["first_seen"]) == (T0 + timedelta(seconds=3), T0)
    assert row["running_package_id"] == 8  # the last online status in the batch
    assert row["firmware_version"] == "1.6.0" and row["capabilities"]["arena_bytes"] == 1024
    assert [i["code"] for i in row["capability_issues"]] == ["arena_smaller"]
    assert row["trusted_kids"] == [kid.hex()]
    assert [(a, b, c) for a, _, b, c, _ in audits()] == [
        ("device.firmware_change", {"firmware_version": "1.4.0"}, {"firmware_version": "1.5.0"}),
        ("device.firmware_change", {"firmware_version": "1.5.0"}, {"firmware_version": "1.6.0"}),
        ("device.capability_issues", {"issues": []}, {"issues": row["capability_issues"]}),
    ]


@pytest.mark.django_db
def test_a_batch_leaves_what_one_at_a_time_leaves(hardware_profile: HardwareProfile) -> None:
    """Random batches (seeded) over the same devices, applied one status at a time on one set
    and as a batch on a twin set: the same rows and the same audit trail."""
    generator = random.Random(20261206)
    kids = [bytes([i]) * 8 for i in range(3)]
    choices: list[Status] = [online(3), online(4, firmware(hardware_profile, "1.5.0")),
                             online(5, firmware(hardware_profile, "1.6.0", arena_bytes=1024)),
                             online(0),
                             online(6, keys=(kids[0],)), online(None, keys=(kids[1], kids[2])),
                             OFFLINE]
    singles = [make_device(hardware_profile, f"one{i}") for i in range(6)]
    batched = [make_device(hardware_profile, f"batch{i}") for i in range(6)]
    Device.objects.filter(pk__in=[singles[5].pk, batched[5].pk]).update(
        revoked_at=timezone.now())
    plan = [(generator.randrange(6), generator.choice(choices),
             T0 + timedelta(seconds=generator.randrange(30))) for _ in range(60)]
    for index, status, at in plan:
        apply_status(singles[index].pk, status, at)
    trail_singles = audits()
    AuditLog.objects.all().delete()
    apply_statuses([(batched[index].pk, status, at) for index, status, at in plan])
    assert rows(batched) == rows(singles)
    assert len(trail_singles) > 4  # the plan changes firmware and issues several times
    by_pk = {b.pk: s.pk for s, b in zip(singles, batched, strict=True)}
    assert [(a, by_pk[int(pk)], b, c, label.split("-")[0])
            for a, pk, b, c, label in audits()] == \
        [(a, int(pk), b, c, label.replace("one", "batch").split("-")[0])
         for a, pk, b, c, label in trail_singles]
    assert rows([batched[5]])[0][0] == DeviceState.ENROLLED  # revoked: untouched


@pytest.mark.django_db
def test_a_batch_costs_a_few_statements_whatever_its_size(
        hardware_profile: HardwareProfile) -> None:
    """One locked read and one write per set of changed columns: not two per status (and
    the presence-only read touches no field it does not load)."""
    devices = [make_device(hardware_profile, f"n{i}") for i in range(40)]
    statuses = [(d.pk, online(7), T0) for d in devices]
    statuses += [(d.pk, online(9), T0 + timedelta(seconds=1)) for d in devices]
    with CaptureQueriesContext(connection) as queries:
        apply_statuses(statuses)
    writes = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(writes) == 1
    assert len(queries.captured_queries) <= 5  # savepoint/transaction, read, write
    after = rows(devices)
    assert {(r[0], r[1], r[2], r[7]) for r in after} == {
        (DeviceState.ONLINE, T0 + timedelta(seconds=1), T0, 9)}  # presence only: read less
    assert {r[3]["firmware_version"] for r in after} == {CAPABILITIES["firmware_version"]}


@pytest.mark.django_db(transaction=True)  # the consumers close stale connections first
def test_the_consumer_applies_a_mixed_batch(hardware_profile: HardwareProfile) -> None:
    """One batch through the worker's consumer: an unknown uid and a device revoked since the
    directory cached it are refused or skipped, each as alone; the others are applied, a
    device's two statuses in order; a gateway's will between its child's statuses takes the
    child offline only when the child's status came before it."""
    first, second, revoked = (make_device(hardware_profile, n) for n in ("a", "b", "r"))
    early_child = make_device(hardware_profile, "early", state=DeviceState.ONLINE,
                              last_seen=T0)
    late_child = make_device(hardware_profile, "late", state=DeviceState.ONLINE,
                             last_seen=T0)
    gateway = Gateway.objects.create(uid=f"gw-{secrets.token_hex(3)}",
                                     state=DeviceState.ONLINE, last_seen=T0)
    gateway.children.set([early_child, late_child])
    consumers = Consumers()
    consumers.directory.prefetch([revoked.uid])  # cached as not revoked ...
    Device.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())  # ... then revoked
    at = [T0 + timedelta(seconds=s) for s in range(10)]
    consumers([
        status_msg(first, online(7, firmware(hardware_profile, "1.5.0")), at[1]),
        status_msg("ghost-000", online(7), at[1]),
        status_msg(revoked, online(7), at[1]),
        status_msg(early_child, online(7), at[2]),
        status_msg(second, online(7), at[2]),
        status_msg(gateway.uid, OFFLINE_PAYLOAD, at[3]),
        status_msg(first, online(9), at[4]),
        status_msg(late_child, online(7), at[5]),
    ])
    got = {d.uid: (d.state, d.last_seen, d.running_package_id)
           for d in Device.objects.all()}
    assert got[first.uid] == (DeviceState.ONLINE, at[4], 9)
    assert got[second.uid] == (DeviceState.ONLINE, at[2], 7)
    assert got[revoked.uid] == (DeviceState.ENROLLED, None, None)
    assert got[early_child.uid] == (DeviceState.OFFLINE, at[3], 7)  # its gateway's will after
    assert got[late_child.uid] == (DeviceState.ONLINE, at[5], 7)  # its own status after
    assert Device.objects.get(pk=first.pk).firmware_version == "1.5.0"
    assert list(DeadLetter.objects.values_list("device_uid", "reason")) == [
        ("ghost-000", "UNKNOWN_DEVICE")]
    assert consumers.counters["status_applied"] == 6  # as one by one: revoked counted too
    assert consumers.counters["gateway_status_applied"] == 1
    assert consumers.counters["rejected_unknown_device"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_status_batch_does_not_block_rows_that_refer_to_its_devices(
    hardware_profile: HardwareProfile,
) -> None:
    """A status batch holds its devices' row locks until it commits; a rollout start inserting
    deployments for those devices (a foreign-key check: KEY SHARE) must not wait on it, or the
    two, taking devices in different orders, can deadlock. The batch locks NO KEY UPDATE."""
    import threading

    from django.db import connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's")
    from fleet.devices.models import Tag

    device = make_device(hardware_profile)
    tag = Tag.objects.create(name="lock-probe")
    locked, release = threading.Event(), threading.Event()

    def batch() -> None:
        try:
            with transaction.atomic():
                apply_statuses([(device.pk, online(3), T0)])
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=batch)
    holder.start()
    try:
        assert locked.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
            # The membership row refers to the device: its insert checks the key (KEY SHARE).
            Device.tags.through.objects.create(device_id=device.pk, tag_id=tag.pk)
    finally:
        release.set()
        holder.join(10)
    assert Device.objects.get(pk=device.pk).state == DeviceState.ONLINE
