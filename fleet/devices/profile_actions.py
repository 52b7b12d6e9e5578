"""Writes on hardware profiles (admins, from the console): atomic and audited.

The REST API edits profiles through the audited viewset with the same audit actions
(``hardware_profile.create|update``); the console calls these functions instead.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.forms.models import model_to_dict

from fleet.audit.actions import record_audit
from fleet.devices.models import HardwareProfile

EDITABLE = ("display_name", "mcu", "ram_bytes", "flash_bytes", "arena_ram_bytes",
            "model_slot_bytes", "kernel_set", "pointer_bits", "supported_ops", "ota_chunk_bytes",
            "description")


def _snapshot(profile: HardwareProfile) -> dict[str, Any]:
    return model_to_dict(profile, fields=("name", *EDITABLE))


@transaction.atomic
def do_create_hardware_profile(*, actor: AbstractBaseUser | None, name: str,
                               **fields: Any) -> HardwareProfile:
    """Create a hardware profile (a class of MCU board and its budgets)."""
    profile = HardwareProfile.objects.create(
        name=name, **{k: v for k, v in fields.items() if k in EDITABLE})
    record_audit(actor=actor, action="hardware_profile.create", obj=profile,
                 after=_snapshot(profile))
    return profile


@transaction.atomic
def do_update_hardware_profile(profile: HardwareProfile, *, actor: AbstractBaseUser | None,
                               **fields: Any) -> HardwareProfile:
    """Change a profile's budgets. Admission reports already made keep the budgets they were
    judged against; new uploads and rollouts are judged against the new ones."""
    profile = HardwareProfile.objects.select_for_update().get(pk=profile.pk)
    before = _snapshot(profile)
    for key, value in fields.items():
        if key in EDITABLE:
            setattr(profile, key, value)
    profile.save()
    after = _snapshot(profile)
    if after != before:
        record_audit(actor=actor, action="hardware_profile.update", obj=profile,
                     before={k: v for k, v in before.items() if v != after[k]},
                     after={k: v for k, v in after.items() if before[k] != v})
    return profile
