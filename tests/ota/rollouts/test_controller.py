"""The rollout state machine: waves, offers, gates, pause/resume/abort/rollback.

The controller publishes through the worker's MQTT client; here a recording publisher
stands in so each step's output can be asserted. The real broker path is covered by the
end-to-end rollout tests.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from device_sdk.protocol.ota_messages import (
    Chunk,
    ChunkRequest,
    DeploymentState,
    decode_chunk,
    encode_chunk_request,
)
from device_sdk.protocol.reasons import Reason
from device_sdk.protocol.topics import package_topic
from fleet.devices.models import Device, HardwareProfile
from fleet.intake.deployments import DeploymentConsumers
from fleet.intake.directory import DeviceDirectory
from fleet.intake.worker import Received
from fleet.telemetry.models import Rollup
from ota.models import ModelVersion, Package
from ota.rollouts import actions
from ota.rollouts.controller import step, tick
from ota.rollouts.delivery import OtaDelivery, apply_report
from ota.rollouts.models import Deployment, Rollout, RolloutState
from ota.rollouts.targeting import wave_of
from testkit.model_factory import tweak_weight

pytestmark = pytest.mark.django_db


class RecordingPublisher:
    """Keeps what the controller would send to the broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload))

    def topics(self, suffix: str) -> list[str]:
        return [t for t, _ in self.sent if t.endswith(suffix)]


@pytest.fixture
def versions(operator_client: APIClient, hardware_profile: Any, dense_tflite: bytes
             ) -> tuple[ModelVersion, ModelVersion]:
    """Two validated versions of one model (1.0.0, then 1.1.0 with one weight changed)."""
    operator_client.post("/api/v1/models/", {"name": "kws"}, format="json")
    changed = tweak_weight(dense_tflite)
    out = []
    for version, data in (("1.0.0", dense_tflite), ("1.1.0", changed)):
        body = {"model": "kws", "version": version, "file": SimpleUploadedFile("m.tflite", data)}
        response = operator_client.post("/api/v1/model-versions/", body, format="multipart")
        assert response.status_code == 201
        out.append(ModelVersion.objects.get(pk=response.json()["id"]))
    return out[0], out[1]


@pytest.fixture
def fleet_on_v1(versions: tuple[ModelVersion, ModelVersion]) -> list[Device]:
    """40 esp32-s3 devices running a package of version 1.0.0."""
    from ota.packaging.actions import do_build_package

    profile = HardwareProfile.objects.get(name="esp32-s3")
    v1_package = do_build_package(versions[0], profile, actor=None)
    return [Device.objects.create(
        uid=f"esp-{i:03d}", hardware_profile=profile, public_key_pem="-", key_algorithm="ed25519",
        public_key_fingerprint=f"{i:064x}", running_package_id=v1_package.pk,
    ) for i in range(40)]


@pytest.fixture(autouse=True)
def _run_on_commit(django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the controller's after-commit publishes, as a real (committing) worker would."""
    from ota.rollouts import controller

    real_step = controller.step

    def committing_step(*args: Any, **kwargs: Any) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            real_step(*args, **kwargs)

    monkeypatch.setattr(controller, "step", committing_step)
    monkeypatch.setitem(globals(), "step", committing_step)


def new_rollout(versions: Any, devices: list[Device], **kwargs: Any) -> Rollout:
    rollout = actions.do_create_rollout(actor=None, name="r", model_version=versions[1],
                                        devices=devices, **{"waves": [10, 50, 100], **kwargs})
    return actions.do_start_rollout(rollout, actor=None)


def report_all(rollout: Rollout, state: DeploymentState, *, share: float = 1.0,
               detail: int = 0) -> int:
    offered = list(Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED))
    chosen = offered[: round(len(offered) * share)]
    for dep in chosen:
        assert apply_report(dep.device_id, dep.package_id, state, detail)
    return len(chosen)


def test_wave_membership_is_deterministic_and_proportional() -> None:
    waves = [1, 10, 50, 100]
    a = [wave_of(7, f"d{i}", waves) for i in range(5000)]
    assert a == [wave_of(7, f"d{i}", waves) for i in range(5000)]
    share = Counter(a)
    assert 20 <= share[0] <= 80  # ~1 %
    assert 2200 <= share[0] + share[1] + share[2] <= 2800  # ~50 %
    assert a != [wave_of(8, f"d{i}", waves) for i in range(5000)]  # another rollout, other mix


def test_rollout_runs_wave_by_wave_to_completion(versions: Any, fleet_on_v1: list[Device]) -> None:
    # A wave seed whose first wave is not empty (an empty wave is passed at once, rightly).
    seed = next(s for s in range(1, 1000)
                if any(wave_of(s, d.uid, [10, 50, 100]) == 0 for d in fleet_on_v1))
    rollout = new_rollout(versions, fleet_on_v1, wave_seed=seed)
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)
    first_wave = Deployment.objects.filter(rollout=rollout, wave=0).count()
    assert len(publisher.topics("/ota/offer")) == first_wave
    assert Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED).count() == first_wave
    package = Package.objects.get(rollouts=rollout)
    assert all(p == bytes(package.manifest) for t, p in publisher.sent if t.endswith("/offer"))
    for _ in range(10):
        report_all(rollout, DeploymentState.CONFIRMED)
        step(rollout.pk, publisher)
        rollout.refresh_from_db()
        if rollout.state == RolloutState.COMPLETED:
            break
    assert rollout.state == RolloutState.COMPLETED
    assert Deployment.objects.filter(rollout=rollout, state=DeploymentState.CONFIRMED).count() == 40
    assert set(Device.objects.values_list("running_package_id", flat=True)) == {package.pk}
    assert len(publisher.topics("/ota/offer")) == 40  # each device offered exactly once


def test_failing_canary_pauses_with_reason_and_resume_continues(
    versions: Any, fleet_on_v1: list[Device]
) -> None:
    rollout = new_rollout(versions, fleet_on_v1, waves=[50, 100], failure_threshold=0.2)
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)
    offered = Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED).count()
    failed = report_all(rollout, DeploymentState.FAILED, share=0.3, detail=Reason.TRIAL_FAILED)
    report_all(rollout, DeploymentState.CONFIRMED)
    step(rollout.pk, publisher)
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    assert f"{failed} of {offered}" in rollout.paused_reason
    assert "TRIAL_FAILED" in rollout.paused_reason
    sent_while_paused = len(publisher.sent)
    tick("w", publisher)
    assert len(publisher.sent) == sent_while_paused  # paused: no offers
    actions.do_resume_rollout(rollout, actor=None)
    step(rollout.pk, publisher)
    assert len(publisher.topics("/ota/offer")) == offered + failed  # the failed get a new offer


def test_abort_stops_offers(versions: Any, fleet_on_v1: list[Device]) -> None:
    rollout = new_rollout(versions, fleet_on_v1, waves=[100], offers_per_minute=5)
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)
    assert len(publisher.topics("/ota/offer")) == 5  # the rate limit
    actions.do_abort_rollout(rollout, actor=None)
    tick("w", publisher)
    assert len(publisher.topics("/ota/offer")) == 5  # (the trust bundle now revokes it)
    failed = Deployment.objects.filter(rollout=rollout, state=DeploymentState.FAILED)
    assert failed.count() == 40
    assert set(failed.values_list("reason", flat=True)) == {Reason.ABORTED}


def test_rollback_offers_the_previous_version_to_devices_that_took_the_new(
    versions: Any, fleet_on_v1: list[Device]
) -> None:
    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)
    took = report_all(rollout, DeploymentState.CONFIRMED, share=0.5)
    back = actions.do_rollback_rollout(rollout, actor=None)
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ABORTED
    assert back.rollback_of_id == rollout.pk
    assert back.model_version == versions[0]
    assert back.state == RolloutState.RUNNING
    assert Deployment.objects.filter(rollout=back).count() == took


def test_health_gate_trips_when_mean_score_drops_on_the_canary(
    versions: Any, fleet_on_v1: list[Device]
) -> None:
    rollout = new_rollout(versions, fleet_on_v1, waves=[50, 100], max_score_drop=20,
                          health_min_events=50)
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)
    report_all(rollout, DeploymentState.CONFIRMED)
    canary = Deployment.objects.filter(rollout=rollout, state=DeploymentState.CONFIRMED)
    start = rollout.wave_started_at.replace(second=0, microsecond=0)
    rows = []
    for dep in canary:
        rows.append(Rollup(device_id=dep.device_id, model_version_id=versions[0].pk,
                           bucket=start - timedelta(minutes=5), label=1, count=20,
                           score_sum=20 * 220))
        rows.append(Rollup(device_id=dep.device_id, model_version_id=versions[1].pk,
                           bucket=start + timedelta(minutes=1), label=1, count=20,
                           score_sum=20 * 150))
    Rollup.objects.bulk_create(rows)
    step(rollout.pk, publisher, now=timezone.now() + timedelta(minutes=2))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    assert "health gate: mean score fell 220.0 -> 150.0" in rollout.paused_reason


def test_chunks_only_for_offered_packages(versions: Any, fleet_on_v1: list[Device]) -> None:
    from ota.registry.storage import artifact_storage

    rollout = new_rollout(versions, fleet_on_v1, waves=[10, 100])
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)
    package = Package.objects.get(rollouts=rollout)
    offered = Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED).first()
    waiting = Deployment.objects.filter(rollout=rollout, state=DeploymentState.PENDING).first()
    deployments = DeploymentConsumers(OtaDelivery(publisher), DeviceDirectory())

    def request(uid: str, pkg: int) -> list[Any]:
        payload = encode_chunk_request(ChunkRequest(pkg, 0, 512))
        msg = Received(f"fleet/v1/{uid}/ota/get", payload, 1, 1, timezone.now())
        return deployments.consume_chunk_requests([(uid, msg)])

    assert request(offered.device.uid, package.pk) == []
    chunk = decode_chunk(publisher.sent[-1][1])
    assert chunk.data == artifact_storage().get(package.transfer_sha256)[:512]
    assert publisher.sent[-1][0] == f"fleet/v1/{offered.device.uid}/ota/chunk"
    offered.refresh_from_db()
    assert offered.state == DeploymentState.DOWNLOADING
    refused = request(waiting.device.uid, package.pk)
    assert [r.reason for r in refused] == [Reason.PACKAGE_NOT_OFFERED]


def test_incompatible_profile_refuses_the_rollout(versions: Any, big_arena_tflite: bytes,
                                                  operator_client: APIClient) -> None:
    body = {"model": "kws", "version": "9.0.0",
            "file": SimpleUploadedFile("m.tflite", big_arena_tflite)}
    big = operator_client.post("/api/v1/model-versions/", body, format="multipart").json()
    nano = HardwareProfile.objects.get(name="arduino-nano-33-ble-sense")
    Device.objects.create(uid="nano-1", hardware_profile=nano, public_key_pem="-",
                          key_algorithm="ed25519", public_key_fingerprint="f" * 64)
    response = operator_client.post("/api/v1/rollouts/", {
        "name": "big", "model_version": big["id"], "target_devices": ["nano-1"]}, format="json")
    assert (response.status_code, response.json()["reason"]) == (409, "incompatible")
    assert "arduino-nano-33-ble-sense" in response.json()["detail"]
    # The refusal's extra reaches the client: why, per profile (the API's one handler).
    assert set(response.json()["refusals"]) == {"arduino-nano-33-ble-sense"}
    assert not Rollout.objects.exists()


def test_rollout_api_creates_starts_and_controls(versions: Any, fleet_on_v1: list[Device],
                                                 operator_client: APIClient) -> None:
    response = operator_client.post("/api/v1/rollouts/", {
        "name": "api", "model_version": versions[1].pk, "target_profile": "esp32-s3",
        "waves": [25, 100]}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["state"] == "running"
    assert [w["devices"] for w in body["progress"]][-1] + sum(
        w["devices"] for w in body["progress"][:-1]) == 40
    rid = body["id"]
    assert operator_client.post(f"/api/v1/rollouts/{rid}/pause/").json()["state"] == "paused"
    again = operator_client.post(f"/api/v1/rollouts/{rid}/pause/")
    assert (again.status_code, again.json()["reason"]) == (409, "bad_state")
    assert operator_client.post(f"/api/v1/rollouts/{rid}/resume/").json()["state"] == "running"
    assert operator_client.post(f"/api/v1/rollouts/{rid}/abort/").json()["state"] == "aborted"


def test_carousel_turns_once_for_a_rate_limited_wave_of_joiners(
    versions: Any, fleet_on_v1: list[Device],
) -> None:
    """Joins are batched into turns: while offers are still due, the carousel waits
    ``max_wait`` for more joiners, then one turn serves all who joined; nothing is sent for
    devices that have not joined."""
    from ota.registry.storage import artifact_storage

    rollout = new_rollout(versions, fleet_on_v1, waves=[100], offers_per_minute=20)
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)  # 20 offered, 20 still due
    package = Package.objects.get(rollouts=rollout)
    size = len(artifact_storage().get(package.transfer_sha256))
    delivery = OtaDelivery(publisher, max_wait_s=0.3, carousel_bytes_per_s=10**9,
                           join_poll_s=0)
    fanout = package_topic(package.pk)

    from device_sdk.protocol.fanout import crypt
    from ota.rollouts.delivery_keys import fanout_key

    key = fanout_key(package.pk)

    def chunks() -> list[Chunk]:  # decrypted with the key offered devices get
        out = [decode_chunk(p) for t, p in publisher.sent if t == fanout]
        return [Chunk(c.pkg, c.offset, crypt(key, c.pkg, c.offset, c.data)) if key else c
                for c in out]

    assert delivery.carousel_tick() == 0  # nobody joined yet
    report_all(rollout, DeploymentState.DOWNLOADING)  # the 20 offered join
    assert delivery.carousel_tick() == 0  # more are due: wait for them a moment
    time.sleep(0.35)
    delivery.carousel_tick()  # waited long enough: one turn
    assert sum(len(c.data) for c in chunks()) == size
    assert delivery.carousel_tick() == 0  # all served: quiet
    assert b"".join(c.data for c in sorted(chunks(), key=lambda c: c.offset)) == \
        artifact_storage().get(package.transfer_sha256)


def test_carousel_waits_while_a_waves_joins_keep_coming_past_the_offer_grace(
    versions: Any, fleet_on_v1: list[Device],
) -> None:
    """On a busy server a big wave's reports are applied long after its offers went out: the
    offered devices still count as coming while joins keep arriving (one within
    ``join_gap``), so one turn serves the whole wave; once joins stop, the devices that never
    joined are not waited for (the turn serves those who did)."""
    from ota.registry.storage import artifact_storage

    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)  # all 40 offered at once
    package = Package.objects.get(rollouts=rollout)
    size = len(artifact_storage().get(package.transfer_sha256))
    fanout = package_topic(package.pk)
    # Offers count as fresh for no time at all: only the flow of joins holds the turn back.
    delivery = OtaDelivery(publisher, max_wait_s=60, offer_grace_s=0, join_gap_s=0.5,
                           join_poll_s=0, carousel_bytes_per_s=10**9)

    def fanned_out() -> int:
        return sum(len(decode_chunk(p).data) for t, p in publisher.sent if t == fanout)

    assert report_all(rollout, DeploymentState.DOWNLOADING, share=0.5) == 20
    assert delivery.carousel_tick() == 0  # joins are coming: wait for the rest
    assert report_all(rollout, DeploymentState.DOWNLOADING, share=0.5) == 10
    assert delivery.carousel_tick() == 0  # still coming
    time.sleep(0.6)  # then nothing for longer than the gap: the 10 left are not waited for
    delivery.carousel_tick()
    assert fanned_out() == size  # one turn for the 30 who joined
    assert delivery.carousel_tick() == 0


def test_late_joiners_turn_waits_for_the_devices_the_first_turn_served(
    versions: Any, fleet_on_v1: list[Device],
) -> None:
    """The broker copies a turn to every subscribed device: the late joiners' turn waits
    while devices the first turn served are still downloading (they would get the package a
    second time), and goes as soon as they are done, or after ``max_wait``."""
    from ota.registry.storage import artifact_storage

    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)
    package = Package.objects.get(rollouts=rollout)
    size = len(artifact_storage().get(package.transfer_sha256))
    fanout = package_topic(package.pk)
    delivery = OtaDelivery(publisher, max_wait_s=60, offer_grace_s=0, join_gap_s=0,
                           join_poll_s=0, carousel_bytes_per_s=10**9)

    def fanned_out() -> int:
        return sum(len(decode_chunk(p).data) for t, p in publisher.sent if t == fanout)

    first = [d.pk for d in Deployment.objects.filter(rollout=rollout).order_by("id")[:30]]
    report_all(rollout, DeploymentState.DOWNLOADING, share=0.75)  # 30 join
    delivery.carousel_tick()
    assert fanned_out() == size  # one turn for them
    time.sleep(0.01)
    report_all(rollout, DeploymentState.DOWNLOADING)  # the 10 others join late
    assert delivery.carousel_tick() == 0  # the 30 are still taking their turn in
    for dep in Deployment.objects.filter(pk__in=first):
        assert apply_report(dep.device_id, dep.package_id, DeploymentState.VERIFIED, 0)
    delivery.carousel_tick()
    assert fanned_out() == 2 * size  # now the late joiners' turn
    assert delivery.carousel_tick() == 0


def test_a_batch_of_reports_applies_like_one_report_at_a_time(
    versions: Any, fleet_on_v1: list[Device],
) -> None:
    """The worker applies a batch of reports in one go: a device's several steps in one batch,
    repeats and steps out of order, unknown packages and failures end as if applied singly."""
    from ota.rollouts.delivery import apply_reports

    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    step(rollout.pk, RecordingPublisher())
    deps = list(Deployment.objects.filter(rollout=rollout).order_by("id"))
    a, b, c, d = deps[:4]
    S = DeploymentState
    reports = [
        *[(a.device_id, a.package_id, s, 0) for s in (S.DOWNLOADING, S.VERIFIED, S.INSTALLED,
                                                      S.TRIAL, S.CONFIRMED)],
        (a.device_id, a.package_id, S.DOWNLOADING, 0),  # late repeat: stays confirmed
        (b.device_id, b.package_id, S.TRIAL, 0),
        (b.device_id, b.package_id, S.VERIFIED, 0),  # out of order: the furthest state stays
        (c.device_id, c.package_id, S.FAILED, int(Reason.TRIAL_FAILED)),
        (d.device_id, d.package_id + 999, S.CONFIRMED, 0),  # never offered
    ]
    assert apply_reports(reports) == [True] * 9 + [False]
    for dep in (a, b, c, d):
        dep.refresh_from_db()
    assert (a.state, b.state, c.state, d.state) == (S.CONFIRMED, S.TRIAL, S.FAILED, S.OFFERED)
    assert c.reason == Reason.TRIAL_FAILED and a.confirmed_at is not None
    assert Device.objects.get(pk=a.device_id).running_package_id == a.package_id
    assert Device.objects.get(pk=b.device_id).running_package_id != b.package_id
    assert apply_reports([]) == []


def test_a_refusal_under_package_zero_fails_the_devices_open_offer(
    versions: Any, fleet_on_v1: list[Device],
) -> None:
    """A device that could not authenticate an offer reports package 0 (the id inside is
    anyone's to choose): the refusal fails the deployment the server offered it; a device with
    no open offer, or a package-0 report that is not a refusal, matches nothing."""
    from ota.rollouts.delivery import apply_reports

    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    step(rollout.pk, RecordingPublisher())
    a, b, c = list(Deployment.objects.filter(rollout=rollout).order_by("id"))[:3]
    S = DeploymentState
    apply_reports([(b.device_id, b.package_id, S.DOWNLOADING, 0)])  # b's offer is taken
    reports = [(a.device_id, 0, S.FAILED, int(Reason.MANIFEST_UNKNOWN_KEY)),
               (b.device_id, 0, S.FAILED, int(Reason.MANIFEST_BAD_SIGNATURE)),
               (a.device_id, 0, S.CONFIRMED, 0),
               (c.device_id, c.package_id, S.DOWNLOADING, 0),  # c takes its offer, then a
               (c.device_id, 0, S.FAILED, int(Reason.MANIFEST_BAD_SIGNATURE))]  # forged one
    assert apply_reports(reports) == [True, False, False, True, False]
    for dep in (a, b, c):
        dep.refresh_from_db()
    assert (a.state, a.reason) == (S.FAILED, Reason.MANIFEST_UNKNOWN_KEY)
    assert b.state == S.DOWNLOADING
    assert c.state == S.DOWNLOADING  # the refusal in the same batch was not of c's offer


def test_the_lease_lasts_rollout_lease_s_and_only_then_passes_to_another_worker(
    versions: Any, fleet_on_v1: list[Device], settings: Any,
) -> None:
    """ROLLOUT_LEASE_S sets how long a worker holds a rollout: another worker's tick steps
    nothing until it ran out, then takes the lease."""
    from ota.rollouts.controller import claim

    settings.ROLLOUT_LEASE_S = 7
    rollout = new_rollout(versions, fleet_on_v1)
    now = timezone.now()
    assert claim(rollout.pk, "a", now)
    rollout.refresh_from_db()
    assert (rollout.lease_owner, rollout.lease_until) == ("a", now + timedelta(seconds=7))
    assert not claim(rollout.pk, "b", now + timedelta(seconds=6.9))
    assert claim(rollout.pk, "a", now + timedelta(seconds=1))  # the holder renews
    assert not claim(rollout.pk, "b", now + timedelta(seconds=7.9))
    assert claim(rollout.pk, "b", now + timedelta(seconds=8.1))
    assert Rollout.objects.get(pk=rollout.pk).lease_owner == "b"
