"""Serializers of the registry, packaging and signing-key API."""

from __future__ import annotations

from rest_framework import serializers

from fleet.core.uploads import check_upload_sizes
from fleet.devices.models import HardwareProfile
from ota.models import (
    ConversionJob,
    FactoryVersion,
    Model,
    ModelVersion,
    Package,
    ProfileCompatibility,
    RevalidationJob,
    SigningKey,
)
from ota.registry.limits import upload_limits


class ModelSerializer(serializers.ModelSerializer):
    labels = serializers.ListField(child=serializers.CharField(max_length=64), required=False,
                                   max_length=1024)
    version_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Model
        fields = ["id", "name", "description", "labels", "input_meaning", "output_meaning",
                  "created_at", "version_count"]


class ConversionJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConversionJob
        fields = ["state", "progress", "message", "error", "attempts", "created_at",
                  "finished_at"]


class CompatibilitySerializer(serializers.ModelSerializer):
    hardware_profile = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = ProfileCompatibility
        fields = ["hardware_profile", "compatible", "reasons", "arena_bytes_required"]


class ModelVersionSerializer(serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="name", read_only=True)
    compatibility = CompatibilitySerializer(many=True, read_only=True)
    conversion = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "model", "version", "sha256", "size_bytes", "source", "status", "notes",
                  "metrics", "created_at", "compatibility", "conversion"]

    def get_conversion(self, mv: ModelVersion) -> dict | None:
        job = getattr(mv, "conversion_job", None)
        return ConversionJobSerializer(job).data if job else None


class ModelVersionDetailSerializer(ModelVersionSerializer):
    """The detail adds the full validation report (ops, tensors, arena, probe outputs)."""

    class Meta(ModelVersionSerializer.Meta):
        fields = ModelVersionSerializer.Meta.fields + ["validation"]


class ModelVersionUploadSerializer(serializers.Serializer):
    """Multipart upload: a .tflite ``file``, or a ``keras`` model plus ``dataset`` to convert."""

    model = serializers.SlugRelatedField(slug_field="name", queryset=Model.objects.all())
    version = serializers.CharField(max_length=32)
    notes = serializers.CharField(required=False, default="", allow_blank=True, max_length=5000)
    file = serializers.FileField(required=False, help_text=".tflite model")
    samples = serializers.FileField(required=False, help_text=".npy/.npz inputs to run at validation")
    keras = serializers.FileField(required=False, help_text=".keras model to convert to int8")
    dataset = serializers.FileField(required=False,
                                    help_text=".npy/.npz representative data (x, optional y)")

    def validate(self, data: dict) -> dict:
        # 413 from the sizes the upload handler measured, before anything is read.
        check_upload_sizes({f: data.get(f) for f in ("file", "samples", "keras", "dataset")},
                           upload_limits())
        has_file, has_keras = "file" in data, "keras" in data
        if has_file == has_keras:
            raise serializers.ValidationError("give either a .tflite `file` or a `keras` model")
        if has_keras and "dataset" not in data:
            raise serializers.ValidationError({"dataset": "conversion needs representative data"})
        return data


class PackageSerializer(serializers.ModelSerializer):
    model_version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all())
    hardware_profile = serializers.SlugRelatedField(slug_field="name",
                                                    queryset=HardwareProfile.objects.all())
    base_version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(), required=False, allow_null=True
    )
    encoding = serializers.ChoiceField(choices=["raw", "compressed", "delta"], required=False,
                                       help_text="default: the smallest that applies")
    signing_key = serializers.SlugRelatedField(slug_field="kid", read_only=True)
    model = serializers.CharField(source="model_version.model.name", read_only=True)
    version = serializers.CharField(source="model_version.version", read_only=True)

    class Meta:
        model = Package
        fields = ["id", "model_version", "model", "version", "hardware_profile", "base_version",
                  "encoding", "sequence", "transfer_sha256", "transfer_size", "installed_size",
                  "signing_key", "expires_at", "created_at"]
        read_only_fields = ["sequence", "transfer_sha256", "transfer_size", "installed_size",
                            "expires_at", "created_at"]

    def to_representation(self, instance: Package) -> dict:
        data = super().to_representation(instance)
        data["encoding"] = ["raw", "compressed", "delta"][instance.encoding]
        return data


class SigningKeySerializer(serializers.ModelSerializer):
    introduced_by = serializers.SlugRelatedField(slug_field="kid", read_only=True,
                                                 allow_null=True)  # null: the first key
    rotation_record = serializers.SerializerMethodField()
    trust = serializers.SerializerMethodField(
        help_text="devices (not revoked) reporting that they trust this key, and their share")

    class Meta:
        model = SigningKey
        fields = ["kid", "public_key", "state", "introduced_by", "rotation_record", "trust",
                  "created_at", "activated_at", "retired_at"]

    def get_trust(self, key: SigningKey) -> dict:
        """``{trusting, devices, unknown, share}``: what activation is judged on."""
        from ota.signing.actions import trust_share

        share = trust_share(key)
        return {"trusting": share.trusting, "devices": share.devices, "unknown": share.unknown,
                "share": round(share.share, 4)}

    def get_rotation_record(self, key: SigningKey) -> str | None:
        """The COSE_Sign1 record introducing this key, hex (devices apply it before use)."""
        return bytes(key.rotation_record).hex() if key.rotation_record else None


class RevalidationJobSerializer(serializers.ModelSerializer):
    """A re-validation of every version (or one) after a hardware profile changed."""

    hardware_profile = serializers.SlugRelatedField(slug_field="name", read_only=True,
                                                    allow_null=True)
    progress = serializers.FloatField(read_only=True)

    class Meta:
        model = RevalidationJob
        fields = ["id", "hardware_profile", "model_version", "state", "total", "done", "progress",
                  "message", "created_at", "finished_at"]


class FactoryVersionRequestSerializer(serializers.Serializer):
    """Register a version as a profile's factory model (a rollback target for package 0)."""

    hardware_profile = serializers.SlugRelatedField(slug_field="name",
                                                    queryset=HardwareProfile.objects.all())


class FactoryVersionSerializer(serializers.ModelSerializer):
    hardware_profile = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = FactoryVersion
        fields = ["hardware_profile", "model_version", "registered_at"]
