"""Serializers of the devices API."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from device_sdk.protocol.enrollment import MAX_NONCE_BYTES, MAX_SIGNATURE_BYTES
from device_sdk.protocol.topics import is_valid_uid
from fleet.devices.models import Device, DeviceGroup, EnrollmentToken, HardwareProfile, Tag

OP_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
MAX_OPS = 256


def validate_op_names(ops: list[str]) -> list[str]:
    """Check a list of TFLite op names as TFLite spells them (CONV_2D, ...)."""
    if len(ops) > MAX_OPS:
        raise serializers.ValidationError(f"at most {MAX_OPS} ops")
    bad = [op for op in ops if not OP_NAME.match(op)]
    if bad:
        raise serializers.ValidationError(f"not TFLite op names: {', '.join(bad[:5])}")
    return sorted(set(ops))


class HardwareProfileSerializer(serializers.ModelSerializer):
    supported_ops = serializers.ListField(child=serializers.CharField(max_length=64))

    class Meta:
        model = HardwareProfile
        fields = [
            "id", "name", "display_name", "mcu", "ram_bytes", "flash_bytes", "arena_ram_bytes",
            "model_slot_bytes", "kernel_set", "pointer_bits", "supported_ops",
            "ota_chunk_bytes", "description",
        ]

    def validate_supported_ops(self, ops: list[str]) -> list[str]:
        return validate_op_names(ops)


class DeviceGroupSerializer(serializers.ModelSerializer):
    device_count = serializers.SerializerMethodField()

    class Meta:
        model = DeviceGroup
        fields = ["id", "name", "description", "created_at", "device_count"]

    def get_device_count(self, group: DeviceGroup) -> int:
        """The list's annotation, or a count for a group just created or edited (the schema
        promises the field in every answer)."""
        count = getattr(group, "device_count", None)
        return group.device_set.count() if count is None else count


class DeviceSerializer(serializers.ModelSerializer):
    hardware_profile = serializers.SlugRelatedField(slug_field="name", read_only=True)
    group = serializers.SlugRelatedField(
        slug_field="name", queryset=DeviceGroup.objects.all(), allow_null=True, required=False
    )
    tags = serializers.ListField(
        child=serializers.SlugField(max_length=64), required=False, source="tag_names"
    )
    revoked = serializers.BooleanField(read_only=True)

    class Meta:
        model = Device
        fields = [
            "uid", "name", "hardware_profile", "group", "tags", "state", "created_at",
            "first_seen", "last_seen", "firmware_version", "tflm_version", "capabilities",
            "capability_issues", "public_key_fingerprint", "key_algorithm", "revoked",
            "revoked_at",
        ]
        read_only_fields = [
            f for f in fields if f not in ("name", "group", "tags")
        ]

    def to_representation(self, instance: Device) -> dict[str, Any]:
        instance.tag_names = [t.name for t in instance.tags.all()]
        return super().to_representation(instance)


class CapabilitiesSerializer(serializers.Serializer):
    """Device capabilities as the protocol names them (device_sdk/protocol/status.py) (JSON at enrollment)."""

    firmware_version = serializers.CharField(max_length=64)
    tflm_version = serializers.CharField(max_length=64, required=False, default="")
    ops = serializers.ListField(child=serializers.CharField(max_length=64), max_length=MAX_OPS)
    arena_bytes = serializers.IntegerField(min_value=0, max_value=2**31)
    slot_bytes = serializers.IntegerField(min_value=0, max_value=2**31, required=False)
    pointer_bits = serializers.ChoiceField(choices=[32, 64], required=False, default=32)

    def validate_ops(self, ops: list[str]) -> list[str]:
        return validate_op_names(ops)


class HexBytesField(serializers.CharField):
    """Bytes given as hex text, at most ``max_bytes`` long."""

    def __init__(self, *, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(max_length=2 * max_bytes, **kwargs)

    def to_internal_value(self, data: Any) -> bytes:  # type: ignore[override]
        text = super().to_internal_value(data)
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise serializers.ValidationError("must be hex") from None


class EnrollRequestSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=128)
    public_key = serializers.CharField(max_length=4096)
    hardware = serializers.SlugField(max_length=64)
    capabilities = CapabilitiesSerializer()
    uid = serializers.SlugField(max_length=64, required=False)
    name = serializers.CharField(max_length=100, required=False, default="")
    nonce = HexBytesField(max_bytes=MAX_NONCE_BYTES,
                          help_text="from POST /api/v1/enroll/challenge/, hex")
    signature = HexBytesField(
        max_bytes=MAX_SIGNATURE_BYTES,
        help_text="the device key's signature over the enrollment message "
                  "(device_sdk/protocol/enrollment.py), hex")

    def validate_uid(self, uid: str) -> str:
        if not is_valid_uid(uid):  # the wire rules: no MQTT wildcards, "pkg" is reserved
            raise serializers.ValidationError("not a valid device id for MQTT topics")
        return uid


class EnrollChallengeSerializer(serializers.Serializer):
    nonce = serializers.CharField(help_text="hex; sign it within expires_in seconds, once")
    expires_in = serializers.IntegerField()


class MqttCredentialSerializer(serializers.Serializer):
    url = serializers.CharField()
    username = serializers.CharField()
    credential = serializers.CharField(
        allow_blank=True,
        help_text="MQTT password; empty when the broker authenticates the device by its client "
                  "certificate (client_certificate)")
    ca_cert = serializers.CharField(help_text="PEM of the CA the broker's TLS certificate chains to")


class EnrollMqttSerializer(MqttCredentialSerializer):
    client_certificate = serializers.CharField(
        required=False,
        help_text="with X.509 broker access (BROKER_ACCESS=x509) only: PEM client certificate, "
                  "CN = device_id, for the public key the device enrolled with (it never sends "
                  "its private key). Present it in the TLS handshake with that key; the broker "
                  "takes the CN as username and client id")
    client_ca = serializers.CharField(
        required=False,
        help_text="with client_certificate: PEM of the device CA that issued it (the chain up to "
                  "the root the broker trusts device certificates by)")


class SigningKeyRefSerializer(serializers.Serializer):
    kid = serializers.CharField(help_text="key id, hex")
    public_key = serializers.CharField(help_text="raw Ed25519 public key, hex")


class EnrollResponseSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    created = serializers.BooleanField()
    mqtt = EnrollMqttSerializer()
    signing_keys = SigningKeyRefSerializer(many=True)
    topics_prefix = serializers.CharField()


class EnrollmentTokenSerializer(serializers.ModelSerializer):
    """Tokens as listed: never the token itself, only its prefix."""

    group = serializers.SlugRelatedField(
        slug_field="name", queryset=DeviceGroup.objects.all(), allow_null=True, required=False
    )
    hardware_profile = serializers.SlugRelatedField(
        slug_field="name", queryset=HardwareProfile.objects.all(), allow_null=True,
        required=False,
    )
    expires_at = serializers.DateTimeField(required=False)
    max_uses = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1)
    state = serializers.CharField(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = EnrollmentToken
        fields = [
            "id", "name", "prefix", "max_uses", "uses", "expires_at", "group",
            "hardware_profile", "uid_pattern", "allowed_uids", "state", "created_by",
            "created_at", "revoked_at",
        ]
        read_only_fields = ["prefix", "uses", "created_at", "revoked_at"]
        extra_kwargs = {
            "uid_pattern": {"help_text": "regular expression every enrolled uid must match in "
                                         "full (a factory line's serial format)"},
            "allowed_uids": {"help_text": "the only uids the token may enroll; with neither "
                                          "this nor a pattern, a batch token enrolls "
                                          "key-derived uids only"},
        }

    def validate_uid_pattern(self, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise serializers.ValidationError(f"not a regular expression: {exc}") from None
        return value

    def validate_allowed_uids(self, value: Any) -> list[str]:
        if not isinstance(value, list) or len(value) > 10_000 or not all(
                isinstance(u, str) and is_valid_uid(u) for u in value):
            raise serializers.ValidationError("a list of at most 10,000 valid device ids")
        return sorted(set(value))

    def validate_expires_at(self, value: Any) -> Any:
        if value <= timezone.now():
            raise serializers.ValidationError("must be in the future")
        return value

    def validated_expiry(self) -> Any:
        return self.validated_data.get("expires_at") or timezone.now() + timedelta(days=7)


class EnrollmentTokenCreatedSerializer(EnrollmentTokenSerializer):
    """The one answer that carries the plain token."""

    token = serializers.CharField(read_only=True)

    class Meta(EnrollmentTokenSerializer.Meta):
        fields = EnrollmentTokenSerializer.Meta.fields + ["token"]


class TagSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tag
        fields = ["id", "name"]
