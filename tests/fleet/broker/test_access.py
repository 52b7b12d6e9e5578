"""Pin what each broker identity may do, against a real Mosquitto with dynamic security."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

import pytest
from django.test import override_settings

from fleet.broker.access import (
    Access,
    BrokerAccess,
    BrokerCommandError,
    BrokerUnavailable,
    Grant,
    ServiceRole,
    check_uid,
    device_grants,
    package_grants,
    service_grants,
)
from fleet.broker.dynsec import DynsecAccess, _role_fixes

NOT_AUTHORIZED = 135
BAD_CREDENTIALS = (134, 135)  # Mosquitto 2.0.11 answers 135 for both

Uid = Callable[[str], str]


def refused(reason_code: object) -> bool:
    return getattr(reason_code, "value", None) == NOT_AUTHORIZED


# Policy, no broker -------------------------------------------------------------------------


def test_device_grants_cover_only_the_devices_subtree_and_the_trust_records() -> None:
    """A device publishes its four upstream leaves, reads offer, chunk, key and withdrawal and
    the fleet's trust records; the (encrypted) package fan-out read-only, or with
    FANOUT_ACCESS=grant none until a deployment grants it."""
    encrypted = set(device_grants("a1"))
    assert Grant(Access.RECEIVE, "fleet/v1/pkg/#") in encrypted
    assert Grant(Access.SUBSCRIBE, "fleet/v1/a1/ota/key") in encrypted
    assert not any(g.access is Access.PUBLISH and "pkg" in g.topic for g in encrypted)
    grants = set(device_grants("a1", package_fanout=False))
    assert Grant(Access.PUBLISH, "fleet/v1/a1/events") in grants
    assert Grant(Access.PUBLISH, "fleet/v1/a1/ota/report") in grants
    assert Grant(Access.SUBSCRIBE, "fleet/v1/a1/ota/offer") in grants
    assert Grant(Access.SUBSCRIBE, "fleet/v1/a1/ota/withdraw") in grants
    assert Grant(Access.RECEIVE, "fleet/v1/keys") in grants
    assert not any("pkg" in g.topic for g in grants)
    assert not any(g.access is Access.PUBLISH and g.topic == "fleet/v1/keys" for g in grants)
    assert all(g.topic.startswith("fleet/v1/a1/") or g.topic == "fleet/v1/keys" for g in grants)
    assert set(package_grants(7)) == {Grant(Access.SUBSCRIBE, "fleet/v1/pkg/7/#"),
                                      Grant(Access.RECEIVE, "fleet/v1/pkg/7/#")}


def test_service_roles_split_reading_from_sending() -> None:
    """A monitor never publishes; a publisher never reads; nobody forges device reports."""
    assert not any(g.access is Access.PUBLISH for g in service_grants(ServiceRole.MONITOR))
    assert all(g.access is Access.PUBLISH for g in service_grants("publisher"))
    worker = service_grants("worker")
    assert Grant(Access.SUBSCRIBE, "$share/+/fleet/v1/+/events") in worker
    assert Grant(Access.PUBLISH, "fleet/v1/+/events") not in worker


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "$sys", "pkg", "-x", "a b", "x" * 129])
def test_device_ids_that_would_escape_their_subtree_are_rejected(bad: str) -> None:
    """Wildcards, separators, `$` and the fan-out name cannot be device ids."""
    with pytest.raises(ValueError):
        check_uid(bad)


def test_existing_role_is_converged_to_exactly_the_wanted_acls() -> None:
    """Stale ACLs are removed, missing ones added, matching ones left alone."""
    current = [
        {"acltype": "publishClientSend", "topic": "fleet/v1/a/events", "allow": True},
        {"acltype": "publishClientSend", "topic": "old/topic", "allow": True},
        {"acltype": "subscribePattern", "topic": "fleet/v1/a/ota/offer", "allow": False},
    ]
    wanted = (
        Grant(Access.PUBLISH, "fleet/v1/a/events"),
        Grant(Access.SUBSCRIBE, "fleet/v1/a/ota/offer"),
        Grant(Access.RECEIVE, "fleet/v1/a/ota/offer"),
    )
    fixes = [(f["command"], f["topic"]) for f in _role_fixes("r", current, wanted)]
    assert ("removeRoleACL", "old/topic") in fixes
    assert ("removeRoleACL", "fleet/v1/a/ota/offer") in fixes
    assert ("addRoleACL", "fleet/v1/a/ota/offer") in fixes
    assert ("removeRoleACL", "fleet/v1/a/events") not in fixes
    assert len(fixes) == 4


def test_admin_without_broker_fails_with_a_clear_timeout(unused_port: int) -> None:
    """A command against a port nobody listens on raises BrokerUnavailable, not a hang."""
    access = DynsecAccess("127.0.0.1", unused_port, "admin", "pw", timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="not connected to 127.0.0.1"):
            access.provision_device("dev-1", "secret")
        assert time.monotonic() - started < 3
    finally:
        access.close()


# Against the real broker -------------------------------------------------------------------


@pytest.mark.integration
def test_dynsec_access_implements_the_broker_access_interface(
    broker_access: DynsecAccess,
) -> None:
    """The admin answers a ping and satisfies the broker-neutral Protocol."""
    assert isinstance(broker_access, BrokerAccess)
    assert 0 < broker_access.ping() < 2


@pytest.mark.integration
def test_anonymous_connection_is_refused(probe) -> None:
    """allow_anonymous is false on every listener."""
    assert probe(None).connect().value in BAD_CREDENTIALS


@pytest.mark.integration
def test_wrong_password_is_refused(broker_access: DynsecAccess, probe, uid: Uid) -> None:
    """A provisioned device cannot log in with another password."""
    dev = uid("dev")
    broker_access.provision_device(dev, "right")
    assert probe(dev, "wrong").connect().value in BAD_CREDENTIALS


@pytest.mark.integration
def test_device_must_use_its_uid_as_client_id(broker_access: DynsecAccess, probe, uid: Uid) -> None:
    """Device A cannot take device B's client id, so it cannot kick B off or steal its session."""
    a, b = uid("a"), uid("b")
    broker_access.provision_device(a, "pa")
    broker_access.provision_device(b, "pb")
    assert probe(a, "pa", client_id=b).connect().value in BAD_CREDENTIALS
    assert not probe(a, "pa").connect().is_failure


@pytest.mark.integration
def test_device_publishes_its_own_upstream_topics(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """Events, status (retained), chunk requests and reports from a device are accepted."""
    dev = uid("dev")
    broker_access.provision_device(dev, "pw")
    device = probe(dev, "pw")
    assert not device.connect().is_failure
    for leaf in ("events", "ota/get", "ota/report"):
        assert not device.publish(f"fleet/v1/{dev}/{leaf}").is_failure, leaf
    assert not device.publish(f"fleet/v1/{dev}/status", b"online", retain=True).is_failure


@pytest.mark.integration
def test_device_cannot_publish_to_other_devices_or_server_topics(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """Over MQTT 5 QoS 1 a forbidden publish gets PUBACK 135 and the connection stays up."""
    a, b = uid("a"), uid("b")
    broker_access.provision_device(a, "pa")
    broker_access.provision_device(b, "pb")
    device = probe(a, "pa")
    device.connect()
    forbidden = [
        f"fleet/v1/{b}/events",
        f"fleet/v1/{b}/status",
        f"fleet/v1/{a}/ota/offer",  # server to device: a device must not forge its own offer
        f"fleet/v1/{a}/ota/chunk",
        "fleet/v1/pkg/1/chunk",
        "$CONTROL/dynamic-security/v1",
        "elsewhere",
    ]
    for topic in forbidden:
        assert refused(device.publish(topic)), topic
    assert device.client.is_connected()


@pytest.mark.integration
def test_device_cannot_subscribe_outside_its_downstream_topics(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """`#`, other devices' topics, upstream topics and shared subscriptions are refused."""
    a, b = uid("a"), uid("b")
    broker_access.provision_device(a, "pa")
    device = probe(a, "pa")
    device.connect()
    forbidden = [
        "#",
        "fleet/#",
        "fleet/v1/+/events",
        f"fleet/v1/{b}/ota/offer",
        f"fleet/v1/{a}/events",
        f"$share/g/fleet/v1/{a}/ota/offer",
        "$CONTROL/dynamic-security/#",
        "$SYS/#",
    ]
    for topic in forbidden:
        assert refused(device.subscribe(topic)), topic


@pytest.mark.integration
def test_device_receives_its_offer_chunks_and_package_fanout(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """What the worker sends to a device, and to every device of a wave, arrives."""
    dev, svc = uid("dev"), uid("svc")
    broker_access.provision_device(dev, "pw")
    broker_access.provision_service(svc, "spw", ServiceRole.WORKER)
    device, worker = probe(dev, "pw"), probe(svc, "spw")
    device.connect()
    worker.connect()
    broker_access.grant_package(7, [dev])  # disconnects the device once
    device.close()
    device = probe(dev, "pw")
    device.connect()
    for topic in (f"fleet/v1/{dev}/ota/offer", f"fleet/v1/{dev}/ota/chunk", "fleet/v1/pkg/7/#"):
        assert not device.subscribe(topic).is_failure, topic
    sent = [
        (f"fleet/v1/{dev}/ota/offer", b"offer"),
        (f"fleet/v1/{dev}/ota/chunk", b"chunk"),
        ("fleet/v1/pkg/7/chunk", b"fanout"),
    ]
    for topic, payload in sent:
        assert not worker.publish(topic, payload).is_failure, topic
    received = [device.receive() for _ in sent]
    assert [(m.topic, m.payload) for m in received if m] == sent


@pytest.mark.integration
def test_tls_listener_works_with_the_generated_ca(
    broker, broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """Devices reach the TLS listener when they trust ca.pem, and only then."""
    dev = uid("dev")
    broker_access.provision_device(dev, "pw")
    device = probe(dev, "pw", tls=True)
    assert not device.connect().is_failure
    assert not device.publish(f"fleet/v1/{dev}/events").is_failure
    untrusting = probe(dev, "pw", tls=True, ca_certs=ssl.get_default_verify_paths().cafile)
    with pytest.raises(ssl.SSLError):
        untrusting.connect()


@pytest.mark.integration
def test_payload_over_the_limit_is_refused(
    broker, broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """A full-size OTA chunk passes; a packet over max_packet_size closes the connection."""
    dev, svc = uid("dev"), uid("svc")
    broker_access.provision_device(dev, "pw")
    broker_access.provision_service(svc, "spw", ServiceRole.MONITOR)
    watcher = probe(svc, "spw")
    watcher.connect()
    watcher.subscribe("fleet/v1/+/events")
    device = probe(dev, "pw")
    device.connect()
    assert not device.publish(f"fleet/v1/{dev}/events", bytes(broker.max_payload)).is_failure
    assert watcher.receive() is not None
    device.client.publish(f"fleet/v1/{dev}/events", bytes(broker.max_packet_size), qos=1)
    assert device.disconnected.wait(5), "an oversize packet must close the connection"
    assert watcher.receive(timeout=0.5) is None


@pytest.mark.integration
def test_revoked_device_is_disconnected_within_seconds_and_kept_out(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """deleteClient kicks the live connection (reason 0x98) and the login then fails."""
    dev = uid("dev")
    broker_access.provision_device(dev, "pw")
    device = probe(dev, "pw")
    assert not device.connect().is_failure
    started = time.monotonic()
    broker_access.revoke_device(dev)
    assert device.disconnected.wait(3), "revoked device still connected"
    assert time.monotonic() - started < 3
    assert probe(dev, "pw", client_id=dev).connect().value in BAD_CREDENTIALS
    broker_access.revoke_device(dev)  # idempotent: revoking again is fine


@pytest.mark.integration
def test_reprovisioning_replaces_the_password(broker_access: DynsecAccess, probe, uid: Uid) -> None:
    """Provisioning an existing device updates its password; the old one stops working."""
    dev = uid("dev")
    broker_access.provision_device(dev, "old")
    broker_access.provision_device(dev, "new")
    assert probe(dev, "old").connect().value in BAD_CREDENTIALS
    assert not probe(dev, "new", client_id=dev).connect().is_failure


@pytest.mark.integration
def test_admin_never_rewrites_identities_it_did_not_make(
    broker, broker_access: DynsecAccess, uid: Uid
) -> None:
    """A device id equal to the admin's or a service's username is refused, not taken over."""
    svc = uid("svc")
    broker_access.provision_service(svc, "spw", "monitor")
    with pytest.raises(BrokerCommandError):
        broker_access.provision_device(broker.admin_username, "x")
    with pytest.raises(BrokerCommandError, match="refusing"):
        broker_access.provision_device(svc, "x")
    with pytest.raises(BrokerCommandError, match="refusing"):
        broker_access.revoke_device(svc)
    with pytest.raises(BrokerCommandError, match="refusing"):
        broker_access.revoke_device(broker.admin_username)


@pytest.mark.integration
def test_gateway_touches_its_children_and_nothing_else(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """A gateway speaks for its children only; revoking a child cuts the gateway off it."""
    gw, c1, c2, other = uid("gw"), uid("c1"), uid("c2"), uid("other")
    broker_access.provision_device(other, "opw")
    broker_access.provision_gateway(gw, "gpw", [c1, c2])
    gateway = probe(gw, "gpw")
    assert not gateway.connect().is_failure
    for child in (c1, c2):
        assert not gateway.publish(f"fleet/v1/{child}/events").is_failure
        assert not gateway.subscribe(f"fleet/v1/{child}/ota/offer").is_failure
    for topic in (f"fleet/v1/{gw}/events", f"fleet/v1/{other}/events", f"fleet/v1/{c1}/ota/offer"):
        assert refused(gateway.publish(topic)), topic
    for topic in ("#", f"fleet/v1/{other}/ota/offer", f"fleet/v1/{gw}/ota/offer"):
        assert refused(gateway.subscribe(topic)), topic

    broker_access.revoke_device(c2)
    # Deleting a role disconnects its holders; the gateway logs in again without it.
    assert gateway.disconnected.wait(3)
    again = probe(gw, "gpw", client_id=gw)
    assert not again.connect().is_failure
    assert refused(again.publish(f"fleet/v1/{c2}/events"))
    assert not again.publish(f"fleet/v1/{c1}/events").is_failure


@pytest.mark.integration
def test_gateway_children_can_change_and_revocation_keeps_the_broker_up(
    broker, broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """Re-provisioning swaps the children; revoking any of them never crashes 2.0.11."""
    gw, c1, c2, c3 = uid("gw"), uid("c1"), uid("c2"), uid("c3")
    broker_access.provision_device(c1, "own")  # a child may also hold its own credential
    broker_access.provision_gateway(gw, "gpw", [c1, c2])
    broker_access.provision_gateway(gw, "gpw", [c2, c3])
    gateway = probe(gw, "gpw")
    gateway.connect()
    assert refused(gateway.publish(f"fleet/v1/{c1}/events"))
    assert not gateway.publish(f"fleet/v1/{c3}/events").is_failure
    for child in (c1, c2, c3):
        broker_access.revoke_device(child)
    broker_access.revoke_device(gw)
    assert gateway.disconnected.wait(3)
    assert broker.is_running()
    assert broker_access.ping() < 2


@pytest.mark.integration
def test_service_shares_device_events_between_workers(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """Two workers on one shared subscription split the events of every device."""
    svc, a, b = uid("svc"), uid("a"), uid("b")
    broker_access.provision_service(svc, "spw", ServiceRole.WORKER)
    workers = [probe(svc, "spw", client_id=f"{svc}-{n}") for n in (1, 2)]
    for worker in workers:
        assert not worker.connect().is_failure
        assert not worker.subscribe("$share/ingest/fleet/v1/+/events").is_failure
    devices = []
    for dev in (a, b):
        broker_access.provision_device(dev, "pw")
        devices.append(probe(dev, "pw"))
        devices[-1].connect()
    for n in range(10):
        for dev, device in zip((a, b), devices):
            assert not device.publish(f"fleet/v1/{dev}/events", b"%d" % n).is_failure
    got = {0: [], 1: []}
    for index, worker in enumerate(workers):
        while (message := worker.receive(timeout=0.5)) is not None:
            got[index].append((message.topic, message.payload))
    assert len(got[0]) + len(got[1]) == 20
    assert got[0] and got[1], "both workers should get a share"
    assert refused(workers[0].publish(f"fleet/v1/{a}/events")), "a worker must not forge events"
    assert not workers[0].publish(f"fleet/v1/{a}/ota/offer").is_failure


@pytest.mark.integration
def test_only_devices_offered_a_package_read_its_fanout_and_only_until_revoked(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """Package fan-out is granted per deployment: another device, or the same one after its
    deployment ended, cannot subscribe; no device may publish the trust records."""
    offered, other, svc = uid("deva"), uid("devb"), uid("svc")
    with override_settings(FANOUT_ACCESS="grant"):
        for dev in (offered, other):
            broker_access.provision_device(dev, "pw")
    broker_access.provision_service(svc, "spw", ServiceRole.WORKER)
    broker_access.grant_package(9, [offered])
    a, b = probe(offered, "pw"), probe(other, "pw")
    a.connect()
    b.connect()
    assert not a.subscribe("fleet/v1/pkg/9/#").is_failure
    assert b.subscribe("fleet/v1/pkg/9/#").is_failure
    assert b.subscribe("fleet/v1/pkg/#").is_failure
    assert a.subscribe("fleet/v1/pkg/10/#").is_failure
    assert not b.subscribe("fleet/v1/keys").is_failure
    assert refused(b.publish("fleet/v1/keys", b"forged", retain=True))
    worker = probe(svc, "spw")
    worker.connect()
    assert not worker.publish("fleet/v1/keys", b"bundle", retain=True).is_failure
    # The session broker may still hold an earlier test's retained bundle: take the live one.
    message = b.receive()
    while message is not None and message.retain:
        message = b.receive()
    assert message is not None and message.payload == b"bundle"
    broker_access.revoke_package(9, [offered, "nobody-here"])
    a.close()
    a = probe(offered, "pw")
    a.connect()
    assert a.subscribe("fleet/v1/pkg/9/#").is_failure
