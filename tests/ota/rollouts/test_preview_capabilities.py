# ruff: noqa: F811  (fixtures imported from test_controller are redefined as arguments)
"""The rollout preview lists the targeted devices that cannot take the package, and why.

Before, the preview judged profiles only: a device whose firmware lacks a kernel the model uses,
or whose arena or slot is smaller than the model needs, was counted in like the others.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from fleet.devices.models import Device, HardwareProfile
from ota.models import ProfileCompatibility
from ota.rollouts import actions
from tests.ota.rollouts.test_controller import versions  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def _device(uid: str, profile: HardwareProfile, caps: dict[str, Any]) -> Device:
    return Device.objects.create(uid=uid, hardware_profile=profile, public_key_pem="-",
                                 key_algorithm="ed25519", public_key_fingerprint=uid,
                                 capabilities=caps)


def test_preview_names_devices_whose_capabilities_cannot_run_the_version(versions: Any) -> None:
    new = versions[1]
    profile = HardwareProfile.objects.get(name="esp32-s3")
    need = ProfileCompatibility.objects.get(model_version=new, hardware_profile=profile)
    ops = list(new.validation["ops"])
    good = {"ops": ops, "arena_bytes": profile.arena_ram_bytes,
            "slot_bytes": profile.model_slot_bytes}
    devices = [
        _device("ok-1", profile, good),
        _device("silent-1", profile, {}),  # reported nothing: not judged
        _device("no-kernel", profile, {**good, "ops": ops[1:]}),
        _device("small-arena", profile, {**good, "arena_bytes": need.arena_bytes_required - 16}),
        _device("small-slot", profile, {**good, "slot_bytes": new.size_bytes - 1}),
    ]
    preview = actions.preview_rollout(new, devices, [100], wave_seed=1)
    assert preview.total == 5 and not preview.refusals
    assert set(preview.device_refusals) == {"no-kernel", "small-arena", "small-slot"}
    assert f"no kernel for {ops[0].upper()}" in preview.device_refusals["no-kernel"]
    assert f"< {need.arena_bytes_required} needed" in preview.device_refusals["small-arena"]
    assert "model slot" in preview.device_refusals["small-slot"]


def test_the_console_preview_lists_them(versions: Any, client: Client, user_factory: Any) -> None:
    from fleet.core.roles import Role

    profile = HardwareProfile.objects.get(name="esp32-s3")
    _device("no-kernel", profile, {"ops": ["SOFTMAX"], "arena_bytes": 0, "slot_bytes": 0})
    client.force_login(user_factory(Role.OPERATOR))
    body = {"name": "r", "model_version": versions[1].pk, "base_version": "", "group": "",
            "tags": "", "hardware_profile": "esp32-s3", "devices": "", "waves": "100",
            "success_pct": 95, "failure_pct": 20, "soak_min": 0, "max_confidence_drop": "",
            "max_label_shift": "", "max_latency_rise": "", "max_rate_drop": "",
            "offers_per_minute": 600, "jitter_s": 0, "max_concurrent": 1000,
            "window_start_hour": "", "window_end_hour": "", "step": "preview"}
    page = client.post("/console/rollouts/new/", body).content.decode()
    assert 'id="preview-device-refusals"' in page and 'data-device="no-kernel"' in page
    assert "no kernel for FULLY_CONNECTED" in page
