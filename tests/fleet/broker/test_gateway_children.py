"""`add_gateway_children` against the real Mosquitto: grants grow, the password stays."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fleet.broker.access import BrokerCommandError
from fleet.broker.dynsec import DynsecAccess

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 135
Uid = Callable[[str], str]


def test_added_children_are_reachable_with_the_same_password(
    broker_access: DynsecAccess, probe, uid: Uid
) -> None:
    """The gateway is dropped once, logs in again with its password, and reaches the child."""
    gw, c1, c2 = uid("gw"), uid("c1"), uid("c2")
    broker_access.provision_device(c2, "own")  # the child's own credential is left alone
    broker_access.provision_gateway(gw, "gpw", [c1])
    gateway = probe(gw, "gpw")
    assert not gateway.connect().is_failure
    assert gateway.publish(f"fleet/v1/{c2}/events").value == NOT_AUTHORIZED

    broker_access.add_gateway_children(gw, [c1, c2])
    assert gateway.disconnected.wait(3), "the broker applies new roles to a new session"
    again = probe(gw, "gpw", client_id=gw)
    assert not again.connect().is_failure
    for child in (c1, c2):
        assert not again.publish(f"fleet/v1/{child}/events").is_failure
        assert not again.subscribe(f"fleet/v1/{child}/ota/chunk").is_failure
    own = probe(c2, "own")
    assert not own.connect().is_failure

    broker_access.add_gateway_children(gw, [c2])  # held already: no command, no disconnect
    assert not again.disconnected.wait(0.5)
    broker_access.revoke_device(c2)  # a revoked child is taken from the gateway, as before
    assert again.disconnected.wait(3)
    third = probe(gw, "gpw", client_id=gw)
    assert not third.connect().is_failure
    assert third.publish(f"fleet/v1/{c2}/events").value == NOT_AUTHORIZED
    broker_access.revoke_device(c1)
    broker_access.revoke_device(gw)


def test_only_existing_gateways_get_children(broker_access: DynsecAccess, uid: Uid) -> None:
    """A missing gateway, a device, or a gateway naming itself are refused."""
    dev, gw = uid("dev"), uid("gw")
    with pytest.raises(BrokerCommandError, match="provision it first"):
        broker_access.add_gateway_children(uid("nobody"), [dev])
    broker_access.provision_device(dev, "pw")
    with pytest.raises(BrokerCommandError, match="not a gateway"):
        broker_access.add_gateway_children(dev, [uid("x")])
    broker_access.provision_gateway(gw, "gpw", [])
    with pytest.raises(ValueError):
        broker_access.add_gateway_children(gw, [gw])
    broker_access.revoke_device(dev)
    broker_access.revoke_device(gw)
