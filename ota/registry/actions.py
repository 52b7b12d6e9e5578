"""Every write of the model registry: models, version uploads, validation results."""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from fleet.audit.actions import record_audit
from fleet.devices.models import HardwareProfile
from ota.choices import VersionSource, VersionStatus
from ota.errors import OtaError
from ota.models import ConversionJob, Model, ModelVersion, ProfileCompatibility
from ota.registry.storage import artifact_storage
from ota.validation.admission import (
    MeasurementUnavailable,
    ProfileSpec,
    TargetMeasurement,
    validate_model,
)
from ota.validation.inspect import ModelFormatError, inspect_model
from ota.validation.targets import core_of

log = logging.getLogger(__name__)

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def profile_spec(profile: HardwareProfile) -> ProfileSpec:
    """Describe a hardware profile to the admission check."""
    return ProfileSpec(
        name=profile.name,
        arena_ram_bytes=profile.arena_ram_bytes,
        model_slot_bytes=profile.model_slot_bytes,
        pointer_bits=profile.pointer_bits,
        supported_ops=list(profile.supported_ops),
        kernel_set=profile.kernel_set,
        core=core_of(profile.mcu),
    )


def target_measurement() -> TargetMeasurement:
    """How admission measures arenas on emulated targets, from the settings."""
    return TargetMeasurement(probe_dir=settings.ADMISSION_PROBE_DIR,
                             require=settings.ADMISSION_REQUIRE_MEASURED)


@transaction.atomic
def do_create_model(
    *, name: str, actor: AbstractBaseUser | None, description: str = "",
    labels: list[str] | None = None, input_meaning: str = "", output_meaning: str = "",
) -> Model:
    """Register a model name (its versions come by upload or conversion)."""
    if Model.objects.filter(name=name).exists():
        raise OtaError("model_exists", f"A model named {name!r} exists.", 409)
    model = Model.objects.create(
        name=name, description=description, labels=labels or [], input_meaning=input_meaning,
        output_meaning=output_meaning, created_by=_user(actor),
    )
    record_audit(actor=actor, action="model.create", obj=model,
                 after={"name": name, "labels": model.labels})
    return model


def _user(actor: AbstractBaseUser | None) -> AbstractBaseUser | None:
    return actor if actor is not None and actor.is_authenticated else None


def _check_new_version(model: Model, version: str) -> None:
    if not SEMVER.match(version):
        raise OtaError("bad_version", f"{version!r} is not a semantic version (e.g. 1.2.0).")
    if ModelVersion.objects.filter(model=model, version=version).exists():
        raise OtaError("version_exists", f"{model.name}@{version} exists; versions are immutable.",
                       409)


def do_upload_version(
    model: Model, *, version: str, data: bytes, actor: AbstractBaseUser | None,
    notes: str = "", samples: bytes | None = None,
) -> ModelVersion:
    """Store an uploaded .tflite as a new immutable version and run the admission check.

    The check runs outside the database transaction (it takes a second or two in a TFLM
    subprocess) so it holds no lock; a version left ``validating`` by a crash is re-checked by
    the worker.
    """
    if len(data) > settings.MAX_MODEL_UPLOAD_BYTES:
        raise OtaError("file_too_large", f"Models are limited to {settings.MAX_MODEL_UPLOAD_BYTES} bytes.", 413)
    try:
        inspect_model(data)
    except ModelFormatError as exc:
        raise OtaError("invalid_model", f"Not a TFLite model: {exc}") from None
    storage = artifact_storage()
    with transaction.atomic():
        _check_new_version(model, version)
        mv = ModelVersion.objects.create(
            model=model, version=version, sha256=storage.put(data), size_bytes=len(data),
            source=VersionSource.UPLOADED, status=VersionStatus.VALIDATING, notes=notes,
            dataset_sha256=storage.put(samples) if samples else "", created_by=_user(actor),
        )
        record_audit(actor=actor, action="model_version.upload", obj=mv,
                     after={"sha256": mv.sha256, "size": mv.size_bytes})
    return run_validation(mv)


def do_request_conversion(
    model: Model, *, version: str, keras: bytes, dataset: bytes, actor: AbstractBaseUser | None,
    notes: str = "",
) -> ModelVersion:
    """Queue a Keras model + representative data for int8 conversion by a worker."""
    if len(keras) > settings.MAX_MODEL_UPLOAD_BYTES:
        raise OtaError("file_too_large", f"Models are limited to {settings.MAX_MODEL_UPLOAD_BYTES} bytes.", 413)
    if len(dataset) > settings.MAX_DATASET_UPLOAD_BYTES:
        raise OtaError("file_too_large",
                       f"Data sets are limited to {settings.MAX_DATASET_UPLOAD_BYTES} bytes.", 413)
    storage = artifact_storage()
    with transaction.atomic():
        _check_new_version(model, version)
        mv = ModelVersion.objects.create(
            model=model, version=version, source=VersionSource.CONVERTED,
            status=VersionStatus.CONVERTING, notes=notes, dataset_sha256=storage.put(dataset),
            created_by=_user(actor),
        )
        ConversionJob.objects.create(model_version=mv, keras_path=storage.put(keras),
                                     dataset_path=mv.dataset_sha256)
        record_audit(actor=actor, action="model_version.convert", obj=mv,
                     after={"keras_bytes": len(keras), "dataset_bytes": len(dataset)})
    return mv


def run_validation(mv: ModelVersion) -> ModelVersion:
    """Run the admission check of a version against every hardware profile and store it."""
    storage = artifact_storage()
    data = storage.get(mv.sha256)
    samples = storage.path(mv.dataset_sha256) if mv.dataset_sha256 else None
    profiles = list(HardwareProfile.objects.all())
    try:
        report = validate_model(data, [profile_spec(p) for p in profiles], samples=samples,
                                targets=target_measurement())
    except MeasurementUnavailable as exc:
        # Required, not possible here: the version stays `validating` (the worker re-checks it).
        raise OtaError("measurement_unavailable", str(exc), 503) from None
    by_name = {p.name: p for p in profiles}
    with transaction.atomic():
        mv.validation = report.to_dict()
        mv.status = VersionStatus.READY if report.probe.ok else VersionStatus.INVALID
        mv.save(update_fields=["validation", "status"])
        ProfileCompatibility.objects.filter(model_version=mv).delete()
        ProfileCompatibility.objects.bulk_create([
            ProfileCompatibility(
                model_version=mv, hardware_profile=by_name[c.profile], compatible=c.ok,
                reasons=[{"code": str(r.code), "message": r.message} for r in c.reasons],
                arena_bytes_required=c.arena_required_bytes,
            )
            for c in report.compatibility
        ])
        record_audit(actor=None, actor_label="system", action="model_version.validate", obj=mv,
                     after={"status": mv.status, "fits": report.compatible_profiles})
    log.info("validated %s: %s; fits %s", mv, mv.status, ", ".join(report.compatible_profiles) or "none")
    return mv


def compatibility_reasons(mv: ModelVersion, profile: HardwareProfile) -> list[dict[str, Any]] | None:
    """Return why ``mv`` does not fit ``profile`` (None when it fits)."""
    row = ProfileCompatibility.objects.filter(model_version=mv, hardware_profile=profile).first()
    if row is None:
        return [{"code": "not_validated", "message": f"{mv} has no admission result for {profile}."}]
    return None if row.compatible else row.reasons
