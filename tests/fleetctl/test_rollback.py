"""``fleetctl rollouts rollback`` against a live server: the rollback reaches the API, a new
rollout offers the previous version, and the devices run it again; its --json document and
exit codes, including the refusal when nobody took the version."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.devices.models import Device
from fleetctl.errors import Exit
from ota.models import Package
from ota.rollouts.models import Rollout, RolloutState
from testkit.model_factory import tweak_weight

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _upload(fleetctl: Callable[..., Any], model_file: Path, version: str) -> int:
    up = fleetctl("--json", "models", "upload", str(model_file), "--model", "sine",
                  "--version", version, "--profile", "stm32f746")
    assert up.code == Exit.OK, up.stderr
    return int(json.loads(up.stdout)["id"])


def _roll_out(fleetctl: Callable[..., Any], name: str, version_id: int,
              devices: list[Device]) -> int:
    run = fleetctl("--json", "rollouts", "create", "--name", name, "--version", str(version_id),
                   *[a for d in devices for a in ("--device", d.uid)], "--waves", "100",
                   "--watch", "--timeout", "60")
    assert run.code == Exit.OK, run.stdout + run.stderr
    rollout = json.loads(run.stdout)
    assert rollout["state"] == "completed"
    return int(rollout["id"])


def _running_versions(devices: list[Device]) -> set[int]:
    """The model version each device runs now (its running package's version)."""
    running = Device.objects.filter(pk__in=[d.pk for d in devices]).values_list(
        "running_package_id", flat=True)
    return set(Package.objects.filter(pk__in=list(running))
               .values_list("model_version_id", flat=True))


def test_rollback_through_fleetctl_puts_the_devices_back_on_the_previous_version(
        fleetctl: Callable[..., Any], sine_model_file: Path, lab_devices: list[Device],
        stand_in: Any, tmp_path: Path) -> None:
    """v1 then v2 reach every device; ``rollouts rollback`` of v2 answers (exit 0, --json) the
    new rollout of v1 (rollback_of = v2's rollout, a freshly built package: the devices'
    anti-rollback floor refuses v1's old sequence), v2's rollout ends aborted or completed,
    and once the devices confirm, every one of them runs v1 again."""
    v2_file = tmp_path / "sine-v2.tflite"
    v2_file.write_bytes(tweak_weight(sine_model_file.read_bytes()))
    v1, v2 = _upload(fleetctl, sine_model_file, "5.0.0"), _upload(fleetctl, v2_file, "5.1.0")
    with stand_in() as fleet:
        _roll_out(fleetctl, "to-v1", v1, lab_devices)
        assert _running_versions(lab_devices) == {v1}
        v1_packages = set(Package.objects.filter(model_version_id=v1).values_list("pk",
                                                                                   flat=True))
        forward = _roll_out(fleetctl, "to-v2", v2, lab_devices)
        assert _running_versions(lab_devices) == {v2}
        offers_before = len(fleet.offers)

        back = fleetctl("--json", "rollouts", "rollback", str(forward))
        assert back.code == Exit.OK, back.stderr
        assert back.stderr == ""
        rollout = json.loads(back.stdout)
        assert rollout["rollback_of"] == forward
        assert rollout["model_version"] == v1
        assert rollout["name"] == "rollback of to-v2"
        assert rollout["state"] == "running"
        assert sorted(rollout["target_devices"]) == sorted(d.uid for d in lab_devices)
        assert set(rollout["packages"]).isdisjoint(v1_packages)  # a fresh build of v1

        watched = fleetctl("rollouts", "watch", str(rollout["id"]), "--interval", "0.3",
                           "--timeout", "60")
    assert watched.code == Exit.OK, watched.stdout + watched.stderr
    assert "completed" in watched.stdout
    assert len(fleet.offers) == offers_before + len(lab_devices)
    assert _running_versions(lab_devices) == {v1}
    assert Rollout.objects.get(pk=rollout["id"]).state == RolloutState.COMPLETED
    assert Rollout.objects.get(pk=forward).state in (RolloutState.COMPLETED,
                                                     RolloutState.ABORTED)


def test_rollback_refusals_exit_1_with_the_api_reason(
        fleetctl: Callable[..., Any], sine_model_file: Path, lab_devices: list[Device]) -> None:
    """A rollout no device took has nothing to roll back to: exit 1, reason on stderr (one
    JSON document with --json, a readable line without); a missing rollout is 1 with 404."""
    version = _upload(fleetctl, sine_model_file, "6.0.0")
    created = fleetctl("--json", "rollouts", "create", "--name", "untaken", "--version",
                       str(version), "--device", lab_devices[0].uid)
    assert created.code == Exit.OK, created.stderr
    rollout_id = str(json.loads(created.stdout)["id"])

    refused = fleetctl("--json", "rollouts", "rollback", rollout_id)
    assert refused.code == Exit.ERROR and refused.stdout == ""
    error = json.loads(refused.stderr)
    assert (error["reason"], error["status"], error["exit_code"]) == (
        "nothing_to_roll_back", 409, int(Exit.ERROR))
    plain = fleetctl("rollouts", "rollback", rollout_id)
    assert plain.code == Exit.ERROR
    assert "HTTP 409 [nothing_to_roll_back]" in plain.stderr
    assert Rollout.objects.filter(rollback_of_id=int(rollout_id)).count() == 0

    missing = fleetctl("rollouts", "rollback", "999999")
    assert missing.code == Exit.ERROR and "HTTP 404" in missing.stderr
