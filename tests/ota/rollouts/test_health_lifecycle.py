# ruff: noqa: F811  (fixtures imported from test_controller are redefined as arguments)
"""Health gates for every fleet: a factory-model fleet is judged, a gate that cannot judge
times out with a reason, and a registered factory version is a rollback target.

Before: a fleet on package 0 had no "old version" telemetry, so a gated rollout never judged,
never paused and never timed out; and its rollback had nothing to go back to.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from device_sdk.protocol.ota_messages import DeploymentState
from fleet.devices.models import Device, HardwareProfile
from fleet.telemetry.models import Rollup
from ota.errors import OtaError
from ota.rollouts import actions
from ota.rollouts.models import Deployment, Rollout, RolloutState
from tests.ota.rollouts.test_controller import (  # noqa: F401  (fixtures)
    RecordingPublisher,
    _run_on_commit,
    new_rollout,
    report_all,
    step,
    versions,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def factory_fleet(versions: Any) -> list[Device]:
    """20 esp32-s3 devices on their factory model (they report package 0)."""
    profile = HardwareProfile.objects.get(name="esp32-s3")
    return [Device.objects.create(
        uid=f"fac-{i:03d}", hardware_profile=profile, public_key_pem="-",
        key_algorithm="ed25519", public_key_fingerprint=f"f{i:063x}", running_package_id=None,
    ) for i in range(20)]


def _confirm_canary(rollout: Rollout, publisher: RecordingPublisher) -> list[Deployment]:
    from ota.rollouts import controller

    controller.step(rollout.pk, publisher)
    report_all(rollout, DeploymentState.CONFIRMED)
    return list(Deployment.objects.filter(rollout=rollout, state=DeploymentState.CONFIRMED))


def _telemetry(deps: list[Deployment], version_id: int, bucket: Any, score: int) -> None:
    Rollup.objects.bulk_create([
        Rollup(device_id=d.device_id, model_version_id=version_id, bucket=bucket, label=1,
               count=20, score_sum=20 * score) for d in deps])


def test_a_factory_fleet_is_judged_against_its_own_telemetry_before_the_rollout(
    versions: Any, factory_fleet: list[Device]
) -> None:
    from ota.rollouts import controller

    rollout = new_rollout(versions, factory_fleet, waves=[50, 100], max_score_drop=20,
                          health_min_events=50)
    assert rollout.baseline_until == rollout.started_at
    assert rollout.baseline_from == rollout.started_at - timedelta(hours=1)
    publisher = RecordingPublisher()
    canary = _confirm_canary(rollout, publisher)
    start = rollout.wave_started_at.replace(second=0, microsecond=0)
    _telemetry(canary, 0, start - timedelta(minutes=5), 220)  # package 0: model version 0
    _telemetry(canary, versions[1].pk, start + timedelta(minutes=1), 150)
    controller.step(rollout.pk, publisher, now=timezone.now() + timedelta(minutes=2))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    assert "health gate: mean score fell 220.0 -> 150.0" in rollout.paused_reason


def test_a_healthy_factory_fleet_advances(versions: Any, factory_fleet: list[Device]) -> None:
    from ota.rollouts import controller

    rollout = new_rollout(versions, factory_fleet, waves=[50, 100], max_score_drop=20,
                          health_min_events=50)
    publisher = RecordingPublisher()
    canary = _confirm_canary(rollout, publisher)
    start = rollout.wave_started_at.replace(second=0, microsecond=0)
    _telemetry(canary, 0, start - timedelta(minutes=5), 220)
    _telemetry(canary, versions[1].pk, start + timedelta(minutes=1), 215)
    controller.step(rollout.pk, publisher, now=timezone.now() + timedelta(minutes=2))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING and rollout.current_wave == 1


def test_a_gate_that_cannot_judge_pauses_after_the_health_timeout(
    versions: Any, factory_fleet: list[Device]
) -> None:
    from ota.rollouts import controller

    rollout = new_rollout(versions, factory_fleet, waves=[50, 100], max_score_drop=20,
                          health_min_events=50, health_timeout_s=600)
    publisher = RecordingPublisher()
    _confirm_canary(rollout, publisher)
    now = timezone.now()
    controller.step(rollout.pk, publisher, now=now)  # the wave succeeded: gates start judging
    controller.step(rollout.pk, publisher, now=now + timedelta(seconds=599))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING and rollout.current_wave == 0
    controller.step(rollout.pk, publisher, now=now + timedelta(seconds=601))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    assert "cannot judge wave 1 within 600 s" in rollout.paused_reason
    assert "0 baseline and 0 new events (needs 50 of each)" in rollout.paused_reason


def test_a_registered_factory_version_is_a_rollback_target(
    versions: Any, factory_fleet: list[Device]
) -> None:
    from ota.rollouts import controller

    rollout = new_rollout(versions, factory_fleet, waves=[100])
    controller.step(rollout.pk, RecordingPublisher())
    took = report_all(rollout, DeploymentState.CONFIRMED)
    with pytest.raises(OtaError, match="no factory version is registered for esp32-s3"):
        actions.do_rollback_rollout(rollout, actor=None)
    profile = HardwareProfile.objects.get(name="esp32-s3")
    actions.do_register_factory_version(versions[0], profile, actor=None)
    back = actions.do_rollback_rollout(rollout, actor=None)
    assert back.model_version == versions[0] and back.state == RolloutState.RUNNING
    assert Deployment.objects.filter(rollout=back).count() == took
