# ruff: noqa: F811  (pytest fixtures imported from the module that defines them)
"""The trust chain end to end: the real broker (dynamic security ACLs), the real worker
(controller, carousel, trust bundle on fleet/v1/keys) and a simulated fleet on the Python SDK.

rotate → every device applies the rotation record and reports the new key id in its status →
the share passes the threshold → activate → a rollout signed with the new key is confirmed
everywhere → retire the old key → a package signed with the old key is refused by every device.
Then an abort mid-download: devices stop and report it, and the signed revocation reaches them.
"""

from __future__ import annotations

from typing import Any

import pytest

from device_sdk.protocol.cose import parse_sign1
from device_sdk.protocol.manifest import Manifest, sign_manifest
from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from device_sdk.simulator import Faults
from fleet.devices.models import Device
from ota.models import Package, SigningKey
from ota.rollouts import actions
from ota.rollouts.models import Deployment
from ota.signing.actions import (
    do_activate_signing_key,
    do_retire_signing_key,
    do_rotate_signing_key,
    ensure_signing_key,
    trust_share,
)
from ota.signing.keys import load_private_key
from tests.ota.rollouts.test_rollout_e2e import (  # noqa: F401  (fixtures)
    Lab,
    counts,
    lab,
    wait_done,
    wait_until,
    wide_tflite,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
FLEET = 8


def kids_of(sim: Any) -> list[list[str] | None]:
    uids = [d.client.uid for d in sim.devices]
    return list(Device.objects.filter(uid__in=uids).values_list("trusted_kids", flat=True))


def test_rotate_acknowledge_activate_roll_out_retire_and_the_old_key_is_refused(lab: Lab) -> None:
    old = ensure_signing_key()
    sim = lab.fleet(FLEET, name="t")
    wait_until(lambda: all(k == [old.kid] for k in kids_of(sim)), 30,
               lambda: f"devices report the old key: {kids_of(sim)}")

    new = do_rotate_signing_key(actor=None)
    assert new.state == "pending"
    wait_until(lambda: all(k is not None and new.kid in k for k in kids_of(sim)), 30,
               lambda: f"devices acknowledge the new key: {kids_of(sim)}")
    assert trust_share(new).share == 1.0
    new = do_activate_signing_key(new, actor=None)  # no force: the share passed

    rollout = lab.rollout(sim)
    assert wait_done(rollout, 90) == {"confirmed": FLEET}
    package = Package.objects.get(rollouts=rollout)
    assert parse_sign1(bytes(package.manifest)).kid.hex() == new.kid

    do_retire_signing_key(SigningKey.objects.get(pk=old.pk), actor=None)
    wait_until(lambda: all(k == [new.kid] for k in kids_of(sim)), 30,
               lambda: f"devices drop the retired key: {kids_of(sim)}")

    # A fresh (higher sequence, unexpired) package whose manifest the old key signed.
    forged = actions.do_create_rollout(actor=None, name="old key", model_version=lab.v1,
                                       devices=lab.devices(sim), waves=[100])
    pkg = Package.objects.get(rollouts=forged)
    manifest = Manifest.decode(parse_sign1(bytes(pkg.manifest)).payload)
    Package.objects.filter(pk=pkg.pk).update(
        manifest=sign_manifest(manifest, load_private_key(SigningKey.objects.get(pk=old.pk))))
    actions.do_start_rollout(forged, actor=None)
    assert wait_done(forged, 30) == {"failed": FLEET}, counts(forged)
    assert set(Deployment.objects.filter(rollout=forged).values_list("reason", flat=True)) == {
        Reason.MANIFEST_UNKNOWN_KEY}


def test_an_abort_stops_downloads_and_the_pulled_package_stays_refused(lab: Lab) -> None:
    sim = lab.fleet(4, name="w", faults=Faults())
    for d in sim.devices:  # hold every download at its first chunks: nothing is ever repaired
        d.agent.download_advanced = lambda received: False  # type: ignore[method-assign]
    rollout = lab.rollout(sim)
    wait_done(rollout, 30, states=(DeploymentState.DOWNLOADING,))
    package = Package.objects.get(rollouts=rollout)
    actions.do_abort_rollout(rollout, actor=None)
    # Each device heard the withdrawal, dropped its download and said so.
    wait_until(lambda: all(d.agent.updater.download is None for d in sim.devices), 30,
               "downloads dropped")
    wait_until(lambda: all(package.pk in d.agent.updater.store.meta.revoked_packages
                           for d in sim.devices), 30, "the signed revocation applied")
    # The pulled manifest is still unexpired, yet refused by the same devices.
    for d in sim.devices:
        with pytest.raises(Exception) as exc:
            d.agent.updater.offer(bytes(package.manifest))
        assert getattr(exc.value, "reason", None) in (Reason.ABORTED,
                                                      Reason.MANIFEST_SEQUENCE_REPLAY)
