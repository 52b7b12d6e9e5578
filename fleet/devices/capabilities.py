"""Check what a device says it can run against its hardware profile and a model's needs.

A profile promises budgets (arena RAM, model slot flash) and kernels (registered ops) for its
class of board; admission judges model versions against the profile. A device whose reported
capabilities fall short of its profile (firmware built without a kernel, a smaller arena or
slot) would take packages it cannot run, so its contradictions are flagged when it enrolls and
whenever a status brings capabilities (``Device.capability_issues``), and a rollout preview
names the targeted devices that cannot take the version and why.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cannot_take", "capability_issues"]


def capability_issues(profile: Any, caps: dict[str, Any] | None) -> list[dict[str, str]]:
    """Return how ``caps`` contradicts ``profile`` as ``[{code, message}]`` (empty: none).

    Capabilities that say nothing (no ops, zero arena or slot: a gateway placeholder or an
    older client) are not contradictions.
    """
    if not caps:
        return []
    issues: list[dict[str, str]] = []
    ops = {str(o).upper() for o in caps.get("ops") or ()}
    missing = sorted({str(o).upper() for o in profile.supported_ops or ()} - ops) if ops else []
    if missing:
        issues.append({"code": "ops_missing", "message": (
            f"reports no kernel for {', '.join(missing)}, which {profile.name} registers")})
    arena = int(caps.get("arena_bytes") or 0)
    if arena and arena < profile.arena_ram_bytes:
        issues.append({"code": "arena_smaller", "message": (
            f"arena {arena} bytes, {profile.name} promises {profile.arena_ram_bytes}")})
    slot = int(caps.get("slot_bytes") or 0)
    if slot and slot < profile.model_slot_bytes:
        issues.append({"code": "slot_smaller", "message": (
            f"model slot {slot} bytes, {profile.name} promises {profile.model_slot_bytes}")})
    return issues


def cannot_take(caps: dict[str, Any] | None, *, ops: list[str], arena_bytes: int | None,
                model_bytes: int) -> list[str]:
    """Return why a device with ``caps`` cannot run a model (empty: it can, or says nothing).

    ``ops`` the model's ops, ``arena_bytes`` the arena admission computed for the device's
    profile, ``model_bytes`` the model's size in its slot.
    """
    if not caps:
        return []
    reasons = []
    have = {str(o).upper() for o in caps.get("ops") or ()}
    lacking = sorted({o.upper() for o in ops} - have) if have else []
    if lacking:
        reasons.append(f"no kernel for {', '.join(lacking)}")
    arena = int(caps.get("arena_bytes") or 0)
    if arena and arena_bytes and arena < arena_bytes:
        reasons.append(f"arena {arena} bytes < {arena_bytes} needed")
    slot = int(caps.get("slot_bytes") or 0)
    if slot and slot < model_bytes:
        reasons.append(f"model slot {slot} bytes < model {model_bytes} bytes")
    return reasons
