"""Query parameters and outputs of the telemetry API."""

from __future__ import annotations

from datetime import timedelta

from rest_framework import serializers

from fleet.telemetry.models import DeadLetter
from fleet.telemetry.queries import TelemetryFilter, default_range

MAX_RANGE = timedelta(days=400)
MAX_ID = 2**63 - 1  # ids are 64-bit: a larger number reached the database and failed (a 500)


class TelemetryQuerySerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="default: 24 h ago")
    until = serializers.DateTimeField(required=False, help_text="default: now")
    device = serializers.CharField(required=False, max_length=64, help_text="device uid")
    group = serializers.CharField(required=False, max_length=64)
    hardware_profile = serializers.CharField(required=False, max_length=64)
    tag = serializers.CharField(required=False, max_length=64)
    model_version = serializers.ListField(child=serializers.IntegerField(min_value=0,
                                                                         max_value=MAX_ID),
                                          required=False, max_length=50)
    bucket = serializers.ChoiceField(choices=[60, 300, 900, 3600, 86400], default=60,
                                     required=False, help_text="seconds per point (series)")

    def validate(self, data: dict) -> dict:
        since, until = default_range()
        data.setdefault("since", since)
        data.setdefault("until", until)
        if data["since"] >= data["until"]:
            raise serializers.ValidationError("since must be before until")
        if data["until"] - data["since"] > MAX_RANGE:
            raise serializers.ValidationError("a query covers at most 400 days")
        return data

    def to_filter(self) -> TelemetryFilter:
        d = self.validated_data
        return TelemetryFilter(
            since=d["since"], until=d["until"], device_uid=d.get("device"),
            group=d.get("group"), hardware_profile=d.get("hardware_profile"), tag=d.get("tag"),
            model_version_ids=d.get("model_version", []),
        )


class CompareQuerySerializer(TelemetryQuerySerializer):
    a = serializers.IntegerField(min_value=0, max_value=MAX_ID,
                                 help_text="model version id (the old one)")
    b = serializers.IntegerField(min_value=0, max_value=MAX_ID,
                                 help_text="model version id (the new one)")


class DeadLetterSerializer(serializers.ModelSerializer):
    payload_hex = serializers.SerializerMethodField()

    class Meta:
        model = DeadLetter
        fields = ["id", "received_at", "topic", "device_uid", "reason", "detail", "size",
                  "payload_hex"]

    def get_payload_hex(self, obj: DeadLetter) -> str:
        return bytes(obj.payload)[:256].hex()


# Outputs (documentation of the responses in the OpenAPI schema; the views return the query
# functions' dicts as they are).

class SeriesPointSerializer(serializers.Serializer):
    t = serializers.DateTimeField()
    events = serializers.IntegerField()
    events_per_s = serializers.FloatField()
    mean_score = serializers.FloatField(allow_null=True)
    mean_latency_ms = serializers.FloatField(allow_null=True)


class SeriesSerializer(serializers.Serializer):
    bucket_s = serializers.IntegerField()
    points = SeriesPointSerializer(many=True)


class LabelShareSerializer(serializers.Serializer):
    label = serializers.IntegerField()
    count = serializers.IntegerField()
    share = serializers.FloatField()
    mean_score = serializers.FloatField(allow_null=True)


class LabelsSerializer(serializers.Serializer):
    labels = LabelShareSerializer(many=True)


class LatencyHistogramSerializer(serializers.Serializer):
    le_1ms = serializers.IntegerField()
    le_5ms = serializers.IntegerField()
    le_20ms = serializers.IntegerField()
    le_100ms = serializers.IntegerField()
    gt_100ms = serializers.IntegerField()


class SummarySerializer(serializers.Serializer):
    events = serializers.IntegerField()
    devices = serializers.IntegerField()
    events_per_s = serializers.FloatField()
    mean_score = serializers.FloatField(allow_null=True)
    mean_latency_ms = serializers.FloatField(allow_null=True)
    latency_histogram = LatencyHistogramSerializer()


class CompareSideSerializer(SummarySerializer):
    model_version = serializers.IntegerField()
    labels = LabelShareSerializer(many=True)


class DriftSerializer(serializers.Serializer):
    total_variation = serializers.FloatField()
    psi = serializers.FloatField()


class CompareDeltaSerializer(serializers.Serializer):
    mean_score = serializers.FloatField(allow_null=True)
    mean_latency_ms = serializers.FloatField(allow_null=True)
    events_per_s = serializers.FloatField()


class CompareSerializer(serializers.Serializer):
    a = CompareSideSerializer()
    b = CompareSideSerializer()
    drift = DriftSerializer()
    delta = CompareDeltaSerializer()
