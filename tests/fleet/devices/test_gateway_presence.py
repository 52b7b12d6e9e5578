"""A serial gateway's own status: its presence, and its children's when it goes offline.

``apply_gateway_status`` on the database alone, then through the worker's status consumer
(which must recognise a gateway's uid instead of dead-lettering it as an unknown device).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from device_sdk.gateway.presence import GatewayPresence
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.status import OFFLINE_PAYLOAD, LinkState, Status, decode_status
from fleet.devices.choices import DeviceState
from fleet.devices.models import Device, Gateway, HardwareProfile
from fleet.devices.presence import GatewayStatusApplied, apply_gateway_status
from fleet.intake.consumers import Consumers
from fleet.intake.worker import Received
from fleet.telemetry.models import DeadLetter
from tests.fleet.devices.conftest import make_device

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)  # in the past: the actions use now()
ONLINE = Status(LinkState.ONLINE)  # apply_gateway_status reads the state only
OFFLINE = decode_status(OFFLINE_PAYLOAD)

DeviceFactory = Callable[..., Device]


@pytest.fixture
def device_factory(hardware_profile: HardwareProfile) -> DeviceFactory:
    """Return a maker of enrolled devices in a given presence."""

    def make(name: str, state: DeviceState = DeviceState.ONLINE,
             last_seen: datetime | None = T0, **fields: object) -> Device:
        return make_device(hardware_profile, name, state=state, last_seen=last_seen, **fields)

    return make


def gateway_of(*children: Device, state: DeviceState = DeviceState.ONLINE,
               **fields: object) -> Gateway:
    gateway = Gateway.objects.create(uid=f"gw-{secrets.token_hex(3)}", state=state, **fields)
    gateway.children.set(children)
    return gateway


def presence(*devices: Device) -> list[tuple[str, datetime | None]]:
    return [(d.state, d.last_seen) for d in Device.objects.filter(pk__in=[d.pk for d in devices])
            .order_by("pk")]


@pytest.mark.django_db
def test_online_records_the_gateway_only(device_factory: DeviceFactory) -> None:
    """Online: the gateway's state and last_seen; its children wait for their own statuses."""
    asleep = device_factory("asleep", DeviceState.OFFLINE)
    gateway = gateway_of(asleep, state=DeviceState.ENROLLED)
    at = T0 + timedelta(minutes=5)
    assert apply_gateway_status(gateway.uid, ONLINE, at) == GatewayStatusApplied(
        gateway.uid, DeviceState.ONLINE)
    gateway.refresh_from_db()
    assert (gateway.state, gateway.last_seen) == (DeviceState.ONLINE, at)
    assert presence(asleep) == [(DeviceState.OFFLINE, T0)]


@pytest.mark.django_db
def test_offline_marks_every_child_it_spoke_for_offline(device_factory: DeviceFactory) -> None:
    """The will of a crashed gateway: its online children go offline, last_seen = the will."""
    a, b = device_factory("a"), device_factory("b", last_seen=None)
    gateway = gateway_of(a, b)
    bystander = device_factory("bystander")  # not a child: untouched
    at = T0 + timedelta(seconds=30)
    applied = apply_gateway_status(gateway.uid, OFFLINE, at)
    assert applied is not None and applied.state is DeviceState.OFFLINE
    assert sorted(applied.children_offline) == sorted([a.uid, b.uid])
    assert presence(a, b) == [(DeviceState.OFFLINE, at)] * 2
    assert presence(bystander) == [(DeviceState.ONLINE, T0)]
    gateway.refresh_from_db()
    assert (gateway.state, gateway.last_seen) == (DeviceState.OFFLINE, at)

    again = apply_gateway_status(gateway.uid, OFFLINE, at + timedelta(seconds=1))
    assert again is not None and again.children_offline == ()  # redelivered: nothing new
    assert presence(a, b) == [(DeviceState.OFFLINE, at)] * 2


@pytest.mark.django_db
def test_offline_leaves_children_it_did_not_speak_for(device_factory: DeviceFactory) -> None:
    """Already offline, revoked, held by another live gateway, or newer than the will: kept."""
    went = device_factory("went")
    earlier = T0 - timedelta(hours=1)
    asleep = device_factory("asleep", DeviceState.OFFLINE, last_seen=earlier)
    revoked = device_factory("revoked", revoked_at=T0)
    shared = device_factory("shared")
    newer = device_factory("newer", last_seen=T0 + timedelta(minutes=1))
    gateway = gateway_of(went, asleep, revoked, shared, newer)
    gateway_of(shared)  # another gateway, online, also speaks for `shared`
    gateway_of(went, state=DeviceState.OFFLINE)  # an offline one does not keep `went`
    applied = apply_gateway_status(gateway.uid, OFFLINE, T0 + timedelta(seconds=10))
    assert applied is not None and applied.children_offline == (went.uid,)
    assert presence(asleep, revoked, shared, newer) == [
        (DeviceState.OFFLINE, earlier), (DeviceState.ONLINE, T0), (DeviceState.ONLINE, T0),
        (DeviceState.ONLINE, T0 + timedelta(minutes=1))]


@pytest.mark.django_db
def test_a_status_older_than_the_recorded_presence_changes_nothing(
    device_factory: DeviceFactory,
) -> None:
    """A will applied after the restarted gateway's online status (two workers) is stale."""
    child = device_factory("child")
    gateway = gateway_of(child, last_seen=T0 + timedelta(seconds=5))
    applied = apply_gateway_status(gateway.uid, OFFLINE, T0 + timedelta(seconds=4))
    assert applied == GatewayStatusApplied(gateway.uid, DeviceState.ONLINE, stale=True)
    gateway.refresh_from_db()
    assert (gateway.state, gateway.last_seen) == (DeviceState.ONLINE, T0 + timedelta(seconds=5))
    assert presence(child) == [(DeviceState.ONLINE, T0)]


@pytest.mark.django_db
def test_a_revoked_gateway_is_refused_and_nothing_is_written(
    device_factory: DeviceFactory,
) -> None:
    """A revoked gateway's status (a retained one, say) is refused with a reason."""
    child = device_factory("child")
    gateway = gateway_of(child, revoked_at=T0)
    with pytest.raises(ProtocolError) as refused:
        apply_gateway_status(gateway.uid, OFFLINE, T0 + timedelta(seconds=1))
    assert refused.value.reason is Reason.UNKNOWN_DEVICE
    assert f"gateway {gateway.uid} revoked" in refused.value.detail
    gateway.refresh_from_db()
    assert (gateway.state, gateway.last_seen) == (DeviceState.ONLINE, None)
    assert presence(child) == [(DeviceState.ONLINE, T0)]


@pytest.mark.django_db
def test_a_uid_that_is_no_gateway_is_left_to_the_caller() -> None:
    """None: the consumer then refuses it as the unknown device it is."""
    assert apply_gateway_status("nobody-here", OFFLINE, T0) is None


@pytest.mark.django_db(transaction=True)  # the consumers close stale connections first
def test_the_status_consumer_applies_gateway_statuses_and_dead_letters_revoked_ones(
    device_factory: DeviceFactory,
) -> None:
    """Gateway uids are not unknown devices: applied; a revoked one and a stranger refused."""
    child = device_factory("child")
    gateway = gateway_of(child, state=DeviceState.ENROLLED)
    revoked = gateway_of(state=DeviceState.ENROLLED, revoked_at=T0)
    online = GatewayPresence(gateway.uid).online()  # what the gateway program publishes
    consumers = Consumers()

    def received(uid: str, payload: bytes, at: datetime) -> Received:
        return Received(f"fleet/v1/{uid}/status", payload, 1, 1, at)

    consumers([received(gateway.uid, online, T0)])
    gateway.refresh_from_db()
    assert (gateway.state, gateway.last_seen) == (DeviceState.ONLINE, T0)
    consumers([received(gateway.uid, OFFLINE_PAYLOAD, T0 + timedelta(seconds=2)),
               received(revoked.uid, online, T0), received("stranger", online, T0)])
    gateway.refresh_from_db()
    assert gateway.state == DeviceState.OFFLINE
    assert presence(child) == [(DeviceState.OFFLINE, T0 + timedelta(seconds=2))]
    assert consumers.counters["gateway_status_applied"] == 2
    letters = sorted(DeadLetter.objects.values_list("device_uid", "reason", "detail"))
    assert letters == sorted([
        (revoked.uid, "UNKNOWN_DEVICE", f"gateway {revoked.uid} revoked"),
        ("stranger", "UNKNOWN_DEVICE", "device stranger not enrolled"),
    ])
    assert Gateway.objects.get(pk=revoked.pk).state == DeviceState.ENROLLED


@pytest.mark.django_db
def test_revoking_or_reprovisioning_a_live_gateway_takes_its_children_offline(
    device_factory: DeviceFactory,
) -> None:
    """The broker sends no will when the server cuts a gateway off: the actions do its work."""
    from fleet.devices.gateway_actions import do_provision_gateway, do_revoke_gateway

    kept, moved = device_factory("kept"), device_factory("moved")
    gateway = gateway_of(kept, moved, last_seen=T0)
    do_provision_gateway(uid=gateway.uid, children=[kept.uid], actor=None)  # new password
    gateway.refresh_from_db()
    assert gateway.state == DeviceState.OFFLINE and gateway.last_seen > T0
    assert [s for s, _ in presence(kept, moved)] == [DeviceState.OFFLINE] * 2

    back = device_factory("back")  # came online through the gateway's new login
    gateway.children.add(back)
    apply_gateway_status(gateway.uid, ONLINE, gateway.last_seen + timedelta(seconds=1))
    do_revoke_gateway(gateway, actor=None)
    gateway.refresh_from_db()
    assert gateway.state == DeviceState.REVOKED and gateway.revoked
    assert presence(back)[0][0] == DeviceState.OFFLINE
    do_provision_gateway(uid=gateway.uid, children=[kept.uid], actor=None)  # brought back
    gateway.refresh_from_db()
    assert gateway.state == DeviceState.OFFLINE and not gateway.revoked
