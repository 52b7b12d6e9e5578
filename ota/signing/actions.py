"""Every write on signing keys and the trust chain: create the first key, rotate, activate,
retire, and sign policy records (minimum sequence, revoked packages). All audited.

The trust chain (device_sdk/protocol/trust.py, trust rules) is the list of ``TrustRecord``
rows, published retained on ``fleet/v1/keys`` by the worker (:func:`trust_bundle`). A rotation
makes a PENDING key: devices learn it from the record, report it in their status, and only an
operator's activation (by default once ``KEY_ACTIVATION_SHARE`` of the fleet trusts it) makes it
the signer.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from device_sdk.protocol.limits import MAX_TRUST_RECORDS
from device_sdk.protocol.trust import (
    MAX_ROTATED_KEYS,
    TrustPolicy,
    encode_trust_bundle,
    rotation_for,
    sign_policy,
    sign_rotation,
)
from fleet.audit.actions import record_audit
from fleet.devices.models import Device
from ota.choices import KeyState
from ota.errors import OtaError
from ota.models import SigningKey, TrustRecord
from ota.signing.keys import current_signing_key, load_private_key, new_signing_key_row


@transaction.atomic
def do_create_signing_key(*, actor: AbstractBaseUser | None) -> SigningKey:
    """Create the fleet's first signing key. Later keys come by rotation only."""
    if SigningKey.objects.select_for_update().exists():
        raise OtaError("key_exists", "The fleet has signing keys; rotate instead.", 409)
    key = new_signing_key_row(Ed25519PrivateKey.generate())
    key.activated_at = timezone.now()
    key.save()
    record_audit(actor=actor, action="signing_key.create", obj=key, after={"kid": key.kid})
    return key


def ensure_signing_key() -> SigningKey:
    """Return the current signing key, creating the first one if the fleet has none."""
    key = current_signing_key()
    if key is not None:
        return key
    try:
        return do_create_signing_key(actor=None)
    except OtaError:  # another process made it first
        key = current_signing_key()
        assert key is not None
        return key


def _next_sequence() -> int:
    """The next trust record sequence: above every record and every legacy rotation."""
    top = TrustRecord.objects.aggregate(m=Max("sequence"))["m"] or 0
    return max(top, SigningKey.objects.count()) + 1


@transaction.atomic
def do_rotate_signing_key(*, actor: AbstractBaseUser | None) -> SigningKey:
    """Make a new key, PENDING, introduced by a rotation record signed with the current one.

    The record goes to every device (``fleet/v1/keys``); the key signs nothing until
    :func:`do_activate_signing_key`. One pending key at a time.
    """
    old = current_signing_key()
    if old is None:
        raise OtaError("no_key", "The fleet has no signing key to rotate from.", 409)
    list(SigningKey.objects.select_for_update().all())  # one rotation at a time
    if SigningKey.objects.filter(state=KeyState.PENDING).exists():
        raise OtaError("key_pending", "A rotated key awaits activation; activate or retire it "
                       "first.", 409)
    # A device keeps at most MAX_ROTATED_KEYS keys learnt by rotation (the MCU's flash layout;
    # the SDK keeps the same bound) and refuses a record that would need one more. A device
    # enrolled before the fleet's first rotation learnt every rotated key that way, so count
    # them all: those not retired still hold a slot on it.
    rotated = SigningKey.objects.filter(rotation_record__isnull=False).exclude(
        state=KeyState.RETIRED)
    if rotated.count() >= MAX_ROTATED_KEYS:
        kids = ", ".join(rotated.order_by("created_at").values_list("kid", flat=True))
        raise OtaError("too_many_rotated_keys",
                       f"Devices keep at most {MAX_ROTATED_KEYS} keys introduced by rotation "
                       f"and would refuse another: retire one of {kids} first.", 409)
    private = Ed25519PrivateKey.generate()
    key = new_signing_key_row(private)
    key.state = KeyState.PENDING
    sequence = _next_sequence()
    record = rotation_for(private.public_key(), sequence=sequence)
    key.rotation_record = sign_rotation(record, load_private_key(old))
    key.introduced_by = old
    key.save()
    TrustRecord.objects.create(sequence=sequence, kind=TrustRecord.Kind.ROTATION,
                               record=key.rotation_record, signed_by=old,
                               summary={"introduces": key.kid})
    record_audit(actor=actor, action="signing_key.rotate", obj=key,
                 after={"kid": key.kid, "introduced_by": old.kid, "sequence": sequence})
    return key


@dataclass(frozen=True)
class TrustShare:
    """How much of the fleet reports trusting a key (devices not revoked)."""

    trusting: int
    devices: int
    unknown: int  # devices that never reported their keys (older firmware): not trusting

    @property
    def share(self) -> float:
        return self.trusting / self.devices if self.devices else 1.0


def trust_share(key: SigningKey) -> TrustShare:
    """Count the devices (not revoked) whose last status listed ``key`` among their keys."""
    rows = Device.objects.filter(revoked_at__isnull=True).values_list("trusted_kids", flat=True)
    trusting = devices = unknown = 0
    for kids in rows.iterator(chunk_size=2000):
        devices += 1
        if kids is None:
            unknown += 1
        elif key.kid in kids:
            trusting += 1
    return TrustShare(trusting, devices, unknown)


@transaction.atomic
def do_activate_signing_key(key: SigningKey, *, actor: AbstractBaseUser | None,
                            force: bool = False) -> SigningKey:
    """Make a pending key the signer of new packages.

    Refused (409 ``not_trusted_yet``) while fewer than ``KEY_ACTIVATION_SHARE`` of the devices
    report trusting it, unless ``force``: a package signed with it would fail on the others.
    """
    key = SigningKey.objects.select_for_update().get(pk=key.pk)
    if key.state != KeyState.PENDING:
        raise OtaError("bad_state", f"Only a pending key can be activated; this one is "
                       f"{key.state}.", 409)
    share = trust_share(key)
    threshold = settings.KEY_ACTIVATION_SHARE
    if share.share < threshold and not force:
        raise OtaError(
            "not_trusted_yet",
            f"{share.trusting} of {share.devices} devices ({share.share:.1%}) trust key "
            f"{key.kid}; activation needs {threshold:.0%} (or force).", 409,
            trust_share=round(share.share, 4), threshold=threshold)
    key.state = KeyState.ACTIVE
    key.activated_at = timezone.now()
    key.save(update_fields=["state", "activated_at"])
    record_audit(actor=actor, action="signing_key.activate", obj=key,
                 after={"kid": key.kid, "trust_share": round(share.share, 4),
                        "forced": force and share.share < threshold})
    return key


def _sign_policy(policy_fields: dict, signer: SigningKey, summary: dict) -> TrustRecord:
    sequence = _next_sequence()
    policy = TrustPolicy(sequence, **policy_fields)
    return TrustRecord.objects.create(
        sequence=sequence, kind=TrustRecord.Kind.POLICY,
        record=sign_policy(policy, load_private_key(signer)), signed_by=signer, summary=summary)


@transaction.atomic
def do_retire_signing_key(key: SigningKey, *, actor: AbstractBaseUser | None) -> SigningKey:
    """Stop trusting and using a key, fleet-wide, for good: a signed policy record retires it.

    The record is signed by the current signer when that key is newer than ``key`` (a key
    retires itself or older keys only), else by ``key`` itself (a pending key withdrawn). The
    last active key cannot be retired; a retired key never returns.
    """
    list(SigningKey.objects.select_for_update().all())
    key.refresh_from_db()
    if key.state == KeyState.RETIRED:
        return key
    active = SigningKey.objects.filter(state=KeyState.ACTIVE)
    if key.state == KeyState.ACTIVE and active.count() <= 1:
        raise OtaError("last_key", "Cannot retire the only active signing key.", 409)
    signer = active.exclude(pk=key.pk).order_by("-created_at", "-id").first()
    if signer is None or (signer.created_at, signer.pk) < (key.created_at, key.pk):
        signer = key
    _sign_policy({"retire_kids": (bytes.fromhex(key.kid),)}, signer,
                 {"retires": [key.kid]})
    key.state = KeyState.RETIRED
    key.retired_at = timezone.now()
    key.save(update_fields=["state", "retired_at"])
    record_audit(actor=actor, action="signing_key.retire", obj=key,
                 after={"kid": key.kid, "signed_by": signer.kid})
    return key


def record_policy(*, actor: AbstractBaseUser | None, revoke_packages: list[int] | None = None,
                  min_sequence: int | None = None, why: str = "") -> TrustRecord | None:
    """Sign (with the current key) a policy raising the fleet's minimum manifest sequence
    and/or revoking packages; None when there is nothing to say. Call inside a transaction."""
    revoke = sorted(set(revoke_packages or []))[-16:]
    if not revoke and min_sequence is None:
        return None
    signer = current_signing_key()
    if signer is None:
        return None
    fields: dict = {"revoke_packages": tuple(revoke), "min_sequence": min_sequence}
    row = _sign_policy(fields, signer, {"revoke_packages": revoke, "min_sequence": min_sequence,
                                        "why": why})
    record_audit(actor=actor, action="trust.policy", obj=row,
                 after={"sequence": row.sequence, "revoke_packages": revoke,
                        "min_sequence": min_sequence, "why": why},
                 actor_label=None if actor else "controller")
    return row


def trust_bundle() -> bytes:
    """Return the retained ``fleet/v1/keys`` payload: the newest records, oldest first."""
    rows = list(TrustRecord.objects.order_by("-sequence").values_list("record", flat=True)
                [:MAX_TRUST_RECORDS])
    return encode_trust_bundle([bytes(r) for r in reversed(rows)])
