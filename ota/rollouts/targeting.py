"""Which devices a rollout targets, and which wave each one is in."""

from __future__ import annotations

import hashlib
import secrets

from django.db.models import QuerySet

from fleet.devices.models import Device


def target_devices(
    *, group_id: int | None, tags: list[str], profile_id: int | None, device_ids: list[int]
) -> QuerySet[Device]:
    """Return the non-revoked devices matching every given criterion."""
    qs = Device.objects.filter(revoked_at__isnull=True)
    if group_id:
        qs = qs.filter(group_id=group_id)
    for tag in tags:
        qs = qs.filter(tags__name=tag)
    if profile_id:
        qs = qs.filter(hardware_profile_id=profile_id)
    if device_ids:
        qs = qs.filter(id__in=device_ids)
    return qs.distinct()


def new_wave_seed() -> int:
    """Return a fresh salt for wave membership, fixed when a rollout is first previewed.

    The preview and the rollout it leads to hash with the same salt, so the preview's
    per-wave counts are the rollout's (a rollout's id is unknown while it is previewed).
    """
    return secrets.randbelow(2**62) + 1


def wave_position(salt: int, uid: str) -> float:
    """Return a stable position in [0, 100) for a device in a rollout (hash, not random).

    ``salt`` is the rollout's ``wave_salt``: its wave seed, or its id for older rollouts.
    """
    digest = hashlib.sha256(f"{salt}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def wave_of(salt: int, uid: str, waves: list[float]) -> int:
    """Return the index of the first wave whose cumulative percentage covers the device."""
    position = wave_position(salt, uid)
    for index, percent in enumerate(waves):
        if position < percent:
            return index
    return len(waves) - 1


def check_waves(waves: list[float]) -> list[float]:
    """Validate cumulative wave percentages: increasing, in (0, 100], ending at 100."""
    if not waves or len(waves) > 20:
        raise ValueError("give 1 to 20 waves")
    values = [float(w) for w in waves]
    if any(not 0 < w <= 100 for w in values) or values != sorted(set(values)):
        raise ValueError("waves are increasing percentages in (0, 100]")
    if values[-1] != 100:
        raise ValueError("the last wave must be 100 (%)")
    return values
