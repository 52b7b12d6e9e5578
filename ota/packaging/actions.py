"""Build signed OTA packages for (model version, hardware profile[, base version])."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from device_sdk.protocol.manifest import Manifest, sign_manifest
from device_sdk.protocol.transfer import choose_encoding, encode_transfer
from fleet.audit.actions import record_audit
from fleet.devices.models import HardwareProfile
from ota.choices import Encoding, VersionStatus
from ota.errors import OtaError
from ota.models import ModelVersion, Package, ProfileCompatibility
from ota.registry.actions import compatibility_reasons
from ota.registry.storage import artifact_storage
from ota.signing.actions import ensure_signing_key
from ota.signing.keys import load_private_key
from ota.validation.golden import trial_spec_for

log = logging.getLogger(__name__)


def check_packageable(mv: ModelVersion, profile: HardwareProfile) -> None:
    """Refuse a version that is not validated or does not fit the profile, saying why."""
    if mv.status != VersionStatus.READY:
        raise OtaError("version_not_ready", f"{mv} is {mv.status}, not validated.", 409)
    reasons = compatibility_reasons(mv, profile)
    if reasons:
        text = "; ".join(r["message"] for r in reasons)
        raise OtaError("incompatible", f"{mv} does not fit {profile.name}: {text}", 409,
                       reasons=reasons)


def do_build_package(
    mv: ModelVersion, profile: HardwareProfile, *, actor: AbstractBaseUser | None,
    base: ModelVersion | None = None, encoding: Encoding | None = None,
    validity: timedelta | None = None,
) -> Package:
    """Encode the transfer (raw, compressed, or delta from ``base``) and sign its manifest.

    Without an explicit ``encoding`` the smallest is chosen: a delta only when it is smaller
    than the compressed full model, compression only when smaller than raw.
    """
    check_packageable(mv, profile)
    if base is not None and base.model_id != mv.model_id:
        raise OtaError("bad_base", "A delta base must be a version of the same model.")
    storage = artifact_storage()
    model_bytes = storage.get(mv.sha256)
    base_bytes = storage.get(base.sha256) if base is not None else None
    if encoding is None:
        chosen, transfer = choose_encoding(model_bytes, base_bytes)
    else:
        if encoding == Encoding.DELTA and base_bytes is None:
            raise OtaError("bad_base", "A delta needs a base version.")
        chosen, transfer = Encoding(encoding), encode_transfer(model_bytes, encoding, base_bytes)
    transfer_key = storage.put(transfer)
    compat = ProfileCompatibility.objects.get(model_version=mv, hardware_profile=profile)
    key = ensure_signing_key()
    with transaction.atomic():
        expires = timezone.now() + (validity or timedelta(days=settings.PACKAGE_VALIDITY_DAYS))
        package = Package.objects.create(
            model_version=mv, hardware_profile=profile,
            base_version=base if chosen == Encoding.DELTA else None, encoding=int(chosen),
            transfer_sha256=transfer_key, transfer_size=len(transfer),
            installed_size=len(model_bytes), signing_key=key, expires_at=expires,
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        # The package id is also its anti-rollback sequence: ids only grow, so every new
        # package (a rollback to an older model included) supersedes the ones before it.
        package.sequence = package.pk
        manifest = Manifest(
            sequence=package.sequence,
            model_name=mv.model.name,
            model_version=mv.version,
            hardware_profile=profile.name,
            model_sha256=bytes.fromhex(mv.sha256),
            model_size=len(model_bytes),
            encoding=int(chosen),
            transfer_sha256=hashlib.sha256(transfer).digest(),
            transfer_size=len(transfer),
            arena_bytes=compat.arena_bytes_required or 0,
            expires_at=int(expires.timestamp()),
            package_id=package.pk,
            base_sha256=bytes.fromhex(base.sha256) if chosen == Encoding.DELTA and base else None,
            # The golden-input trial for this profile's kernel set (None: the legacy trial).
            trial=trial_spec_for(mv.validation, profile.name),
        )
        package.manifest = sign_manifest(manifest, load_private_key(key))
        package.save(update_fields=["sequence", "manifest"])
        record_audit(
            actor=actor, action="package.build", obj=package,
            after={"encoding": chosen.name.lower(), "transfer_size": len(transfer),
                   "installed_size": len(model_bytes), "kid": key.kid,
                   "base": str(base) if chosen == Encoding.DELTA else None},
        )
    log.info("built %s: %s, %d -> %d bytes", package, chosen.name.lower(), len(model_bytes),
             len(transfer))
    return package
