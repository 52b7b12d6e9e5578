# ruff: noqa: F811  (pytest fixtures imported from the module that defines them)
"""OTA delivery at scale: chunk requests served a batch at a time, and a carousel that reads
the database once per poll rather than at every tick.

A big wave's repairs arrive in bursts (thousands when devices lag behind the fan-out), and
the worker ticks the carousel five times a second: both must cost the database per batch or
per poll, not per message or per tick, and still answer exactly as before.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from device_sdk.protocol.ota_messages import (
    ChunkRequest,
    DeploymentState,
    decode_chunk,
    encode_chunk_request,
)
from device_sdk.protocol.reasons import Reason
from device_sdk.protocol.topics import package_topic
from fleet.devices.models import Device
from fleet.intake.deployments import DeploymentConsumers
from fleet.intake.directory import DeviceDirectory
from fleet.intake.worker import Received
from ota.models import Package
from ota.registry.storage import artifact_storage
from ota.rollouts import controller
from ota.rollouts.delivery import OtaDelivery
from ota.rollouts.models import Deployment
from tests.ota.rollouts.test_controller import (  # noqa: F401  (fixtures)
    RecordingPublisher,
    _run_on_commit,
    fleet_on_v1,
    new_rollout,
    report_all,
    versions,
)

pytestmark = pytest.mark.django_db


def get(uid: str, pkg: int, offset: int, length: int = 512) -> tuple[str, Received]:
    payload = encode_chunk_request(ChunkRequest(pkg, offset, length))
    return uid, Received(f"fleet/v1/{uid}/ota/get", payload, 1, 1, timezone.now())


def test_a_batch_of_chunk_requests_is_served_like_one_at_a_time(
        versions: Any, fleet_on_v1: list[Device]) -> None:
    """One batch: an offered device asking twice (both served, moved to DOWNLOADING once), a
    downloading one (served, stays), a device not yet offered and one asking for a package it
    was not offered (refused, in their order); one read and one write for the lot."""
    rollout = new_rollout(versions, fleet_on_v1, waves=[100], offers_per_minute=20)
    publisher = RecordingPublisher()
    controller.step(rollout.pk, publisher)
    package = Package.objects.get(rollouts=rollout)
    data = artifact_storage().get(package.transfer_sha256)
    offered = list(Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED)
                   .select_related("device").order_by("id"))
    first, second = offered[0], offered[1]
    Deployment.objects.filter(pk=second.pk).update(state=DeploymentState.DOWNLOADING)
    waiting = (Deployment.objects.filter(rollout=rollout, state=DeploymentState.PENDING)
               .select_related("device").first())
    assert waiting is not None
    deployments = DeploymentConsumers(OtaDelivery(publisher), DeviceDirectory())
    batch = [get(first.device.uid, package.pk, 0), get(waiting.device.uid, package.pk, 0),
             get(first.device.uid, package.pk, 512), get(second.device.uid, package.pk, 1024),
             get(second.device.uid, package.pk + 999, 0)]
    deployments.directory.prefetch(uid for uid, _ in batch)
    sent_before = len(publisher.sent)
    with CaptureQueriesContext(connection) as queries:
        refused = deployments.consume_chunk_requests(batch)
    assert [(r.uid, r.reason) for r in refused] == [
        (waiting.device.uid, Reason.PACKAGE_NOT_OFFERED),
        (second.device.uid, Reason.PACKAGE_NOT_OFFERED)]
    served = [(topic, decode_chunk(payload)) for topic, payload in publisher.sent[sent_before:]]
    assert [(topic.split("/")[2], c.offset, c.data) for topic, c in served] == [
        (first.device.uid, 0, data[:512]), (first.device.uid, 512, data[512:1024]),
        (second.device.uid, 1024, data[1024:1536])]
    states = dict(Deployment.objects.filter(rollout=rollout).values_list("id", "state"))
    assert (states[first.pk], states[second.pk], states[waiting.pk]) == (
        DeploymentState.DOWNLOADING, DeploymentState.DOWNLOADING, DeploymentState.PENDING)
    deployment_queries = [q for q in queries.captured_queries if "ota_deployment" in q["sql"]]
    assert len(deployment_queries) == 2  # one read, one write


def test_carousel_reads_joins_once_per_poll_not_at_every_tick(
    versions: Any, fleet_on_v1: list[Device], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker ticks the carousel five times a second; the database is asked about joins
    every ``join_poll_s``: ticks in between run on what the last poll read (a join is counted
    at the next poll), and cost no query over the deployments."""
    from ota.rollouts import delivery as delivery_module

    clock = [1000.0]  # the carousel's monotonic clock, moved by hand (a loaded box is slow)
    monkeypatch.setattr(delivery_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    publisher = RecordingPublisher()
    controller.step(rollout.pk, publisher)
    package = Package.objects.get(rollouts=rollout)
    size = len(artifact_storage().get(package.transfer_sha256))
    fanout = package_topic(package.pk)
    delivery = OtaDelivery(publisher, max_wait_s=0, join_poll_s=1.0,
                           carousel_bytes_per_s=10**9)
    assert delivery.carousel_tick() == 0  # the first tick polls: nobody joined yet
    report_all(rollout, DeploymentState.DOWNLOADING)
    clock[0] += 0.2
    with CaptureQueriesContext(connection) as queries:
        assert delivery.carousel_tick() == 0  # between polls: the joins are not seen yet
    assert not [q for q in queries.captured_queries if "ota_deployment" in q["sql"]]
    clock[0] += 0.9
    assert delivery.carousel_tick() == size  # the next poll counts them: one turn
    assert any(topic == fanout for topic, _ in publisher.sent)
    clock[0] += 0.2
    assert delivery.carousel_tick() == 0


def polled_rollout(versions: Any, fleet_on_v1: list[Device], monkeypatch: pytest.MonkeyPatch,
                   ) -> tuple[list[float], Any, RecordingPublisher, OtaDelivery]:
    """A one-wave rollout offered to the fleet, and a delivery polling joins every second on a
    monotonic clock moved by hand (a loaded box is slow); return (clock, rollout, publisher,
    delivery)."""
    from ota.rollouts import delivery as delivery_module

    clock = [1000.0]
    monkeypatch.setattr(delivery_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    rollout = new_rollout(versions, fleet_on_v1, waves=[100])
    publisher = RecordingPublisher()
    controller.step(rollout.pk, publisher)
    delivery = OtaDelivery(publisher, max_wait_s=0, join_poll_s=1.0,
                           carousel_bytes_per_s=10**9)
    return clock, rollout, publisher, delivery


def join_all_but_the_last(rollout: Any) -> int:
    """Mark every offered deployment but the newest DOWNLOADING (joined) now; return that one."""
    offered = list(Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED)
                   .order_by("id").values_list("id", flat=True))
    Deployment.objects.filter(id__in=offered[:-1]).update(state=DeploymentState.DOWNLOADING,
                                                          state_changed_at=timezone.now())
    return offered[-1]


def test_a_join_committed_late_within_the_slack_is_still_counted(
    versions: Any, fleet_on_v1: list[Device], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Polls read joins from a little before the previous poll (JOIN_SLACK), not from the
    newest join: a join another worker applied before that poll but committed after it is
    counted at the next poll (and, subscribed before the turn began, costs no new turn)."""
    from datetime import timedelta

    from ota.rollouts import delivery as delivery_module

    clock, rollout, _, delivery = polled_rollout(versions, fleet_on_v1, monkeypatch)
    package = Package.objects.get(rollouts=rollout)
    size = len(artifact_storage().get(package.transfer_sha256))
    late = join_all_but_the_last(rollout)
    clock[0] += 1.0
    assert delivery.carousel_tick() == size  # first poll: they join, one turn
    # Applied 5 s before that poll by another worker, committed only now (within the slack).
    Deployment.objects.filter(id=late).update(
        state=DeploymentState.DOWNLOADING,
        state_changed_at=timezone.now() - delivery_module.JOIN_SLACK + timedelta(seconds=5))
    clock[0] += 1.0
    carousel = delivery._carousels[package.pk]
    assert late not in carousel.joined
    # Counted; subscribed since before the first turn began, it needs no byte more.
    assert delivery.carousel_tick() == 0
    assert late in carousel.joined and carousel.pending == 0


def test_a_join_committed_later_than_the_slack_is_counted_at_the_next_whole_read(
    versions: Any, fleet_on_v1: list[Device], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A report stamped long before it commits (a worker stalled on locks, another host's
    clock behind) falls outside the slack window, but the poll reads every join whole each
    JOIN_FULL_READ: the device is served by the carousel, not left to unicast repairs."""
    from datetime import timedelta

    from ota.rollouts import delivery as delivery_module

    clock, rollout, _, delivery = polled_rollout(versions, fleet_on_v1, monkeypatch)
    package = Package.objects.get(rollouts=rollout)
    late = join_all_but_the_last(rollout)
    clock[0] += 1.0
    delivery.carousel_tick()
    carousel = delivery._carousels[package.pk]
    Deployment.objects.filter(id=late).update(
        state=DeploymentState.DOWNLOADING,
        state_changed_at=timezone.now() - delivery_module.JOIN_SLACK - timedelta(seconds=50))
    clock[0] += 1.0
    delivery.carousel_tick()
    assert late not in carousel.joined  # outside the window of a windowed poll
    delivery._read_whole_at[package.pk] -= delivery_module.JOIN_FULL_READ  # 30 s went by
    clock[0] += 1.0
    delivery.carousel_tick()
    assert late in carousel.joined
