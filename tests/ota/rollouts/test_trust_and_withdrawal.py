# ruff: noqa: F811  (pytest fixtures imported from the module that defines them)
"""Server side of the trust chain and of withdrawals: pending keys and their activation by
trust share, signed retirement and revocation records in the trust bundle, per-deployment
fan-out grants, withdrawal of aborted deployments, short-lived rollout manifests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from device_sdk.protocol.cose import parse_sign1
from device_sdk.protocol.manifest import Manifest
from device_sdk.protocol.ota_messages import DeploymentState, decode_withdrawal
from device_sdk.protocol.reasons import Reason
from device_sdk.protocol.status import LinkState, Status
from device_sdk.protocol.trust import TrustState, trusted_key_set
from fleet.devices.models import Device, HardwareProfile
from fleet.devices.presence import apply_status
from ota.models import Package, SigningKey
from ota.packaging.actions import do_build_package
from ota.rollouts import actions, controller
from ota.rollouts.delivery import apply_report
from ota.rollouts.models import Deployment
from ota.signing.actions import do_activate_signing_key, do_retire_signing_key, trust_bundle
from ota.signing.keys import public_key_of
from tests.ota.rollouts.test_controller import (  # noqa: F401  (fixtures)
    RecordingPublisher,
    _run_on_commit,
    fleet_on_v1,
    new_rollout,
    versions,
)

pytestmark = pytest.mark.django_db


class RecordingAccess:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[str]]] = []

    def grant_package(self, pkg: int, uids: list[str]) -> None:
        self.calls.append(("grant", pkg, sorted(uids)))

    def revoke_package(self, pkg: int, uids: list[str]) -> None:
        self.calls.append(("revoke", pkg, sorted(uids)))


@pytest.fixture
def access(monkeypatch: pytest.MonkeyPatch) -> RecordingAccess:
    recorder = RecordingAccess()
    monkeypatch.setattr(controller, "_broker_access", lambda: recorder)
    return recorder


@pytest.fixture
def grant_mode(settings: Any) -> None:
    settings.FANOUT_ACCESS = "grant"


def committed_tick(publisher: RecordingPublisher, capture: Any) -> None:
    with capture(execute=True):
        controller.tick("w", publisher)


def report_keys(devices: list[Device], kids: list[str]) -> None:
    for d in devices:
        apply_status(d.pk, Status(LinkState.ONLINE, slot=0, uptime_s=1, free_ram=1, seq=0,
                                  keys=tuple(bytes.fromhex(k) for k in kids)), timezone.now())


def test_a_rotated_key_is_pending_and_activates_only_past_the_trust_share(
        admin_client: APIClient, fleet_on_v1: list[Device], versions: Any) -> None:
    old = SigningKey.objects.get()
    rotated = admin_client.post("/api/v1/signing-keys/rotate/").json()
    assert rotated["state"] == "pending"
    profile = HardwareProfile.objects.get(name="esp32-s3")
    assert do_build_package(versions[1], profile, actor=None).signing_key == old  # not yet
    report_keys(fleet_on_v1[:30], [old.kid, rotated["kid"]])
    report_keys(fleet_on_v1[30:], [old.kid])
    body = admin_client.get(f"/api/v1/signing-keys/{rotated['kid']}/").json()
    assert body["trust"] == {"trusting": 30, "devices": 40, "unknown": 0, "share": 0.75}
    refused = admin_client.post(f"/api/v1/signing-keys/{rotated['kid']}/activate/")
    assert (refused.status_code, refused.json()["reason"]) == (409, "not_trusted_yet")
    assert refused.json()["trust_share"] == 0.75
    report_keys(fleet_on_v1[30:39], [old.kid, rotated["kid"]])
    ok = admin_client.post(f"/api/v1/signing-keys/{rotated['kid']}/activate/")
    assert ok.status_code == 200 and ok.json()["state"] == "active"
    package = do_build_package(versions[1], profile, actor=None)
    assert package.signing_key.kid == rotated["kid"]
    assert parse_sign1(bytes(package.manifest)).kid.hex() == rotated["kid"]


def test_a_device_status_without_keys_leaves_them_unknown(fleet_on_v1: list[Device]) -> None:
    device = fleet_on_v1[0]
    report_keys([device], ["00" * 8])
    apply_status(device.pk, Status(LinkState.ONLINE, slot=0, uptime_s=1, free_ram=1, seq=0),
                 timezone.now())
    assert Device.objects.get(pk=device.pk).trusted_kids == ["00" * 8]
    assert Device.objects.get(pk=fleet_on_v1[1].pk).trusted_kids is None


def test_retirement_is_a_signed_record_devices_apply(fleet_on_v1: list[Device]) -> None:
    from ota.signing.actions import do_rotate_signing_key

    old = SigningKey.objects.get()
    enrolled = TrustState(trusted_key_set(public_key_of(old)))  # a device enrolled before
    new = do_rotate_signing_key(actor=None)
    do_activate_signing_key(new, actor=None, force=True)
    do_retire_signing_key(old, actor=None)
    state, errors = enrolled.apply_bundle(trust_bundle())
    assert errors == []
    assert list(state.keys) == [bytes.fromhex(new.kid)]
    assert state.retired == (bytes.fromhex(old.kid),)


def test_offers_send_the_fanout_key_first_and_the_carousel_encrypts_with_it(
        versions: Any, fleet_on_v1: list[Device], access: RecordingAccess) -> None:
    """FANOUT_ACCESS=encrypt (the default): every offered device gets the package's key just
    before its offer; the fan-out is unreadable without it; the broker is not touched."""
    from device_sdk.protocol.fanout import crypt
    from device_sdk.protocol.ota_messages import decode_chunk, decode_fanout_key
    from ota.registry.storage import artifact_storage
    from ota.rollouts.delivery import OtaDelivery

    rollout = new_rollout(versions, fleet_on_v1[:3], waves=[100])
    publisher = RecordingPublisher()
    controller.step(rollout.pk, publisher)
    package = Package.objects.get(rollouts=rollout)
    topics = [t.split("/", 3)[3] for t, _ in publisher.sent]
    assert topics == ["ota/key"] * 3 + ["ota/offer"] * 3
    [key] = {decode_fanout_key(p).key for t, p in publisher.sent if t.endswith("/ota/key")}
    assert access.calls == []
    Deployment.objects.filter(rollout=rollout).update(state=DeploymentState.DOWNLOADING)
    carousel = RecordingPublisher()
    delivery = OtaDelivery(carousel, max_wait_s=0, join_poll_s=0)
    for _ in range(5):
        delivery.carousel_tick()
    chunk = decode_chunk(carousel.sent[0][1])
    plain = artifact_storage().get(package.transfer_sha256)
    assert chunk.data != plain[chunk.offset:chunk.offset + len(chunk.data)]
    assert crypt(key, package.pk, chunk.offset, chunk.data) == \
        plain[chunk.offset:chunk.offset + len(chunk.data)]


@pytest.mark.usefixtures("grant_mode")
def test_offers_grant_the_fanout_and_the_end_of_a_deployment_takes_it_back(
        versions: Any, fleet_on_v1: list[Device], access: RecordingAccess,
        django_capture_on_commit_callbacks: Any) -> None:
    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    publisher = RecordingPublisher()
    controller.step(rollout.pk, publisher)
    package = Package.objects.get(rollouts=rollout)
    offered = sorted(d.uid for d in fleet_on_v1)
    assert access.calls == [("grant", package.pk, offered)]
    done = Deployment.objects.filter(rollout=rollout).select_related("device")[:5]
    for dep in done:
        apply_report(dep.device_id, dep.package_id, DeploymentState.CONFIRMED, 0)
    committed_tick(publisher, django_capture_on_commit_callbacks)
    assert access.calls[1] == ("revoke", package.pk, sorted(d.device.uid for d in done))
    assert Deployment.objects.filter(rollout=rollout, fanout_granted=True).count() == 35


@pytest.mark.usefixtures("grant_mode")
def test_abort_withdraws_offered_devices_and_revokes_the_package_for_all(
        versions: Any, fleet_on_v1: list[Device], access: RecordingAccess,
        django_capture_on_commit_callbacks: Any) -> None:
    from ota.signing.actions import ensure_signing_key

    enrolled = TrustState(trusted_key_set(public_key_of(ensure_signing_key())))
    rollout = new_rollout(versions, fleet_on_v1, waves=[50, 100])
    publisher = RecordingPublisher()
    controller.step(rollout.pk, publisher)
    package = Package.objects.get(rollouts=rollout)
    offered = set(Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED)
                  .values_list("device__uid", flat=True))
    assert 0 < len(offered) < 40
    actions.do_abort_rollout(rollout, actor=None)
    committed_tick(publisher, django_capture_on_commit_callbacks)
    withdrawn = {t.split("/")[2]: decode_withdrawal(p) for t, p in publisher.sent
                 if t.endswith("/ota/withdraw")}
    assert set(withdrawn) == offered  # the devices never offered hear nothing
    assert {(w.pkg, w.reason) for w in withdrawn.values()} == {(package.pk, Reason.ABORTED)}
    assert access.calls[-1] == ("revoke", package.pk, sorted(offered))
    [bundle] = [p for t, p in publisher.sent if t == "fleet/v1/keys"]
    state, errors = enrolled.apply_bundle(bundle)
    assert errors == [] and package.pk in state.revoked
    assert state.min_sequence >= (package.sequence or package.pk)
    # The manifest has not expired, yet no device that applied the record would take it.
    manifest = Manifest.decode(parse_sign1(bytes(package.manifest)).payload)
    assert manifest.expires_at > timezone.now().timestamp()
    # Published once: the next tick has nothing new to say.
    committed_tick(publisher, django_capture_on_commit_callbacks)
    assert [t for t, _ in publisher.sent].count("fleet/v1/keys") == 1


def test_rollout_manifests_live_days_not_a_month(versions: Any, fleet_on_v1: list[Device]) -> None:
    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    package = Package.objects.get(rollouts=rollout)
    assert package.expires_at <= timezone.now() + timedelta(days=7, minutes=1)
