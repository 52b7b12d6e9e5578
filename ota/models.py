"""Nouns of the ota app: Model, ModelVersion, ProfileCompatibility, ConversionJob, SigningKey,
Package."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from fleet.devices.models import HardwareProfile
from ota.choices import Encoding, JobState, KeyState, VersionSource, VersionStatus


class Model(models.Model):
    """A named ML model (e.g. keyword spotter); its versions are what devices run."""

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    labels = models.JSONField(default=list, blank=True, help_text="class names, by output index")
    input_meaning = models.CharField(max_length=200, blank=True, help_text="e.g. 49x40 MFCC")
    output_meaning = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """One immutable .tflite artifact of a model, stored under its SHA-256.

    The validation report (ops, tensors, arena, per-profile verdicts) is written once, when the
    admission check has run; compatibility rows make it queryable.
    """

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="versions")
    version = models.CharField(max_length=32, help_text="semantic version, e.g. 1.2.0")
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    size_bytes = models.PositiveIntegerField(default=0)
    source = models.CharField(max_length=16, choices=VersionSource.choices)
    status = models.CharField(max_length=16, choices=VersionStatus.choices, db_index=True)
    notes = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="float vs int8 accuracy etc.")
    dataset_sha256 = models.CharField(
        max_length=64, blank=True, help_text="artifact of the representative/sample data, if any"
    )
    validation = models.JSONField(null=True, blank=True, help_text="admission check report")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="unique_model_version")
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.version}"


class ProfileCompatibility(models.Model):
    """The admission verdict of one model version on one hardware profile."""

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="compatibility"
    )
    hardware_profile = models.ForeignKey(HardwareProfile, on_delete=models.CASCADE)
    compatible = models.BooleanField()
    reasons = models.JSONField(default=list, help_text="[{code, message}] when not compatible")
    arena_bytes_required = models.PositiveIntegerField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "hardware_profile"], name="unique_version_profile"
            )
        ]

    def __str__(self) -> str:
        verdict = "fits" if self.compatible else "does not fit"
        return f"{self.model_version} {verdict} {self.hardware_profile}"


class ConversionJob(models.Model):
    """Background conversion of a Keras model to int8 .tflite, claimed by a worker with a lease."""

    model_version = models.OneToOneField(
        ModelVersion, on_delete=models.CASCADE, related_name="conversion_job"
    )
    keras_path = models.CharField(max_length=300, help_text="artifact key of the .keras upload")
    dataset_path = models.CharField(max_length=300, help_text="artifact key of the .npy/.npz")
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED,
                             db_index=True)
    progress = models.FloatField(default=0.0)
    message = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"convert {self.model_version} ({self.state} {self.progress:.0%})"


class SigningKey(models.Model):
    """An Ed25519 OTA signing key; the private half is encrypted with the key-encryption key."""

    kid = models.CharField(max_length=16, unique=True, help_text="key id, hex (8 bytes)")
    public_key = models.CharField(max_length=64, help_text="raw public key, hex")
    encrypted_private_key = models.BinaryField(help_text="PKCS#8, encrypted with FLEET_KEK")
    state = models.CharField(max_length=16, choices=KeyState.choices, default=KeyState.ACTIVE)
    rotation_record = models.BinaryField(
        null=True, blank=True, help_text="COSE_Sign1 by the previous key introducing this one"
    )
    introduced_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"key {self.kid} ({self.state})"

    @property
    def kid_hex(self) -> str:
        return self.kid

    @property
    def public_key_hex(self) -> str:
        return self.public_key


class TrustRecord(models.Model):
    """A signed record of the fleet's trust chain, as devices get it on ``fleet/v1/keys``.

    Rotation records (introducing a key) and policy records (retiring keys, raising the
    minimum manifest sequence, revoking packages) share one sequence: devices apply them in
    order (device_sdk/protocol/trust.py, trust rules).
    """

    class Kind(models.TextChoices):
        ROTATION = "rotation", "rotation"
        POLICY = "policy", "policy"

    sequence = models.PositiveBigIntegerField(unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    record = models.BinaryField(help_text="COSE_Sign1")
    signed_by = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="+")
    summary = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["sequence"]

    def __str__(self) -> str:
        return f"{self.kind} record {self.sequence}"


class Package(models.Model):
    """A signed OTA package: a model version for one hardware profile, maybe a delta.

    Its primary key is the package id of manifest key 14 and of chunk requests; its sequence
    (manifest key 2) grows with every package, so devices accept only newer ones.
    """

    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT,
                                      related_name="packages")
    hardware_profile = models.ForeignKey(HardwareProfile, on_delete=models.PROTECT)
    base_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="delta base, when the encoding is delta",
    )
    encoding = models.PositiveSmallIntegerField(choices=Encoding.choices)
    sequence = models.PositiveBigIntegerField(unique=True, null=True)
    manifest = models.BinaryField(help_text="COSE_Sign1 bytes, as sent to devices")
    transfer_sha256 = models.CharField(max_length=64)
    transfer_size = models.PositiveIntegerField()
    installed_size = models.PositiveIntegerField()
    signing_key = models.ForeignKey(SigningKey, on_delete=models.PROTECT)
    expires_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"pkg {self.pk}: {self.model_version} for {self.hardware_profile}"


from ota.jobs.models import RevalidationJob  # noqa: E402,F401  (models of this app)
from ota.rollouts.models import Deployment, FactoryVersion, Rollout  # noqa: E402,F401  (models of this app)
