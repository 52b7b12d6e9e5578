"""Serializers of the rollout API."""

from __future__ import annotations

from rest_framework import serializers

from fleet.devices.models import Device, DeviceGroup, HardwareProfile
from ota.models import ModelVersion
from ota.rollouts.models import Rollout
from ota.rollouts.progress import failure_reasons, wave_progress

_SETTINGS = [
    "success_threshold", "failure_threshold", "soak_s", "max_score_drop", "max_label_shift",
    "max_latency_rise", "max_rate_drop", "health_min_events", "health_timeout_s",
    "offers_per_minute", "rate_growth",
    "jitter_s", "max_concurrent", "window_start_hour", "window_end_hour", "step_timeout_s",
    "max_attempts",
]


class RolloutSerializer(serializers.ModelSerializer):
    model_version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all())
    base_version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all(),
                                                      required=False, allow_null=True)
    target_group = serializers.SlugRelatedField(slug_field="name", required=False,
                                                allow_null=True,
                                                queryset=DeviceGroup.objects.all())
    target_profile = serializers.SlugRelatedField(slug_field="name", required=False,
                                                  allow_null=True,
                                                  queryset=HardwareProfile.objects.all())
    target_devices = serializers.SlugRelatedField(slug_field="uid", many=True, required=False,
                                                  queryset=Device.objects.all())
    target_tags = serializers.ListField(child=serializers.SlugField(), required=False)
    waves = serializers.ListField(child=serializers.FloatField(), default=[1, 10, 50, 100])
    start = serializers.BooleanField(write_only=True, default=True,
                                     help_text="start at once (else stays a draft)")
    packages = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = Rollout
        fields = ["id", "name", "model_version", "base_version", "state", "target_group",
                  "target_tags", "target_profile", "target_devices", "waves", "current_wave",
                  "paused_reason", "packages", "rollback_of", "started_at", "finished_at",
                  "created_at", "start", "baseline_from", "baseline_until", *_SETTINGS]
        read_only_fields = ["state", "current_wave", "paused_reason", "rollback_of",
                            "started_at", "finished_at", "created_at", "baseline_from",
                            "baseline_until"]

    def validate(self, data: dict) -> dict:
        for name in ("success_threshold", "failure_threshold"):
            if name in data and not 0 <= data[name] <= 1:
                raise serializers.ValidationError({name: "a share between 0 and 1"})
        return data


class RolloutDetailSerializer(RolloutSerializer):
    """The detail adds live per-wave counts and failure reasons."""

    progress = serializers.SerializerMethodField()
    failures = serializers.SerializerMethodField()

    class Meta(RolloutSerializer.Meta):
        fields = RolloutSerializer.Meta.fields + ["progress", "failures"]

    def get_progress(self, rollout: Rollout) -> list[dict]:
        return wave_progress(rollout)

    def get_failures(self, rollout: Rollout) -> dict[str, int]:
        return failure_reasons(rollout)
