"""The enrollment's reads and its token write, as two hand-written statements.

An enrollment used to send five ORM statements before its inserts (token locked, hardware
profile, devices by key or uid, token use, and the token's group when it had one); compiling
them was most of its CPU. Here:

1. `take_claim`: ``UPDATE ... SET uses = uses + 1 ... RETURNING`` counts the use and locks the
   token row until the transaction ends, as ``SELECT ... FOR UPDATE`` did: enrollments with
   one token still run one at a time past this point, so ``max_uses`` holds. Every refusal
   raises and rolls the count back; a re-enrollment gives it back (`give_back_claim`).
2. `claim_context`: the profile named by the device, the token's group, and which devices
   hold the key or the uid, in one ``SELECT`` sent after the lock (so under READ COMMITTED it
   sees every enrollment committed before this one got the token).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection

from fleet.core.rows import load_row
from fleet.devices.models import EnrollmentToken, HardwareProfile

_PROFILE_COLUMNS = ("id", "name", "arena_ram_bytes", "model_slot_bytes", "supported_ops")
_TOKEN_COLUMNS = tuple(f.column for f in EnrollmentToken._meta.concrete_fields)


def take_claim(token_hash: str) -> EnrollmentToken | None:
    """Count one use of the token stored as ``token_hash`` and lock its row; return it as it
    was before this use (None: no such token). The caller's transaction must be open."""
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices_enrollmenttoken SET uses = uses + 1 WHERE token_hash = %s"
            f" RETURNING {', '.join(qn(c) for c in _TOKEN_COLUMNS)}", [token_hash])
        row = cursor.fetchone()
    if row is None:
        return None
    claim = load_row(EnrollmentToken, _TOKEN_COLUMNS, row)
    claim.uses -= 1  # judged as it was: this use counts only if the enrollment is granted
    return claim


def give_back_claim(claim: EnrollmentToken) -> None:
    """Undo `take_claim`'s count (a re-enrollment consumes no use)."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE devices_enrollmenttoken SET uses = uses - 1 WHERE id = %s",
                       [claim.pk])


@dataclass(frozen=True)
class ClaimContext:
    """What an enrollment with a token needs to know besides the token."""

    profile: HardwareProfile | None  # the hardware the device names (None: no such profile)
    group_name: str | None  # the token's group, if it has one
    key_device_id: int | None  # the device enrolled with this key, if any
    uid_device_id: int | None  # the device enrolled under the uid asked for, if any


def claim_context(claim: EnrollmentToken, *, hardware: str, fingerprint: str,
                  uid: str) -> ClaimContext:
    """Read what `ClaimContext` holds in one statement."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT g.name, (SELECT id FROM devices_device WHERE public_key_fingerprint = %s),"
            " (SELECT id FROM devices_device WHERE uid = %s), "
            + ", ".join(f"p.{connection.ops.quote_name(c)}" for c in _PROFILE_COLUMNS)
            + " FROM devices_enrollmenttoken t"
            " LEFT JOIN devices_devicegroup g ON g.id = t.group_id"
            " LEFT JOIN devices_hardwareprofile p ON p.name = %s"
            " WHERE t.id = %s", [fingerprint, uid, hardware, claim.pk])
        group_name, key_device_id, uid_device_id, *profile = cursor.fetchone()
    return ClaimContext(
        profile=load_row(HardwareProfile, _PROFILE_COLUMNS, profile) if profile[0] else None,
        group_name=group_name, key_device_id=key_device_id, uid_device_id=uid_device_id)
