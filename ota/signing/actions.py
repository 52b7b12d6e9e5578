"""Every write on signing keys: create the first, rotate, retire. All audited."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from device_sdk.protocol.manifest import rotation_for, sign_rotation
from fleet.audit.actions import record_audit
from ota.choices import KeyState
from ota.errors import OtaError
from ota.models import SigningKey
from ota.signing.keys import current_signing_key, load_private_key, new_signing_key_row


@transaction.atomic
def do_create_signing_key(*, actor: AbstractBaseUser | None) -> SigningKey:
    """Create the fleet's first signing key. Later keys come by rotation only."""
    if SigningKey.objects.select_for_update().exists():
        raise OtaError("key_exists", "The fleet has signing keys; rotate instead.", 409)
    key = new_signing_key_row(Ed25519PrivateKey.generate())
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


@transaction.atomic
def do_rotate_signing_key(*, actor: AbstractBaseUser | None) -> SigningKey:
    """Make a new signing key, introduced by a rotation record signed with the current one.

    Both stay active: devices learn the new key from the record (offered like a manifest)
    before packages are signed with it; retire the old key once the fleet has it.
    """
    old = current_signing_key()
    if old is None:
        raise OtaError("no_key", "The fleet has no signing key to rotate from.", 409)
    private = Ed25519PrivateKey.generate()
    key = new_signing_key_row(private)
    sequence = SigningKey.objects.count()  # grows with every key: devices refuse older records
    record = rotation_for(private.public_key(), sequence=sequence)
    key.rotation_record = sign_rotation(record, load_private_key(old))
    key.introduced_by = old
    key.save()
    record_audit(actor=actor, action="signing_key.rotate", obj=key,
                 after={"kid": key.kid, "introduced_by": old.kid, "sequence": sequence})
    return key


@transaction.atomic
def do_retire_signing_key(key: SigningKey, *, actor: AbstractBaseUser | None) -> SigningKey:
    """Stop trusting and using a key. The last active key cannot be retired."""
    if key.state == KeyState.RETIRED:
        return key
    active = SigningKey.objects.select_for_update().filter(state=KeyState.ACTIVE)
    if active.count() <= 1:
        raise OtaError("last_key", "Cannot retire the only active signing key.", 409)
    key.state = KeyState.RETIRED
    key.retired_at = timezone.now()
    key.save(update_fields=["state", "retired_at"])
    record_audit(actor=actor, action="signing_key.retire", obj=key, after={"kid": key.kid})
    return key
