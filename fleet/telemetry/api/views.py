"""Telemetry API: series, label distributions, version comparison, dead letters."""

from __future__ import annotations

import csv
import io

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.roles import Role
from fleet.telemetry import queries
from fleet.telemetry.api import serializers as s
from fleet.telemetry.models import DeadLetter


class SeriesCsvRenderer(BaseRenderer):
    """Render a series response as CSV (``?format=csv``), one row per bucket."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"
    fields = ["t", "events", "events_per_s", "mean_score", "mean_latency_ms"]

    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: dict | None = None) -> bytes:
        out = io.StringIO()
        if isinstance(data, dict) and "points" in data:
            writer = csv.DictWriter(out, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(data["points"])
        else:  # an error body
            out.write(f"error,{data.get('reason', '') if isinstance(data, dict) else ''}\n")
        if renderer_context and renderer_context.get("response") is not None:
            renderer_context["response"]["Content-Disposition"] = (
                'attachment; filename="telemetry-series.csv"')
        return out.getvalue().encode()


class TelemetryViewSet(viewsets.ViewSet):
    """Aggregates over per-minute rollups. Filters: device, group, hardware_profile, tag,
    model_version (repeatable), since/until."""

    read_role = Role.VIEWER

    def _filter(self, request: Request, cls: type = s.TelemetryQuerySerializer) -> s.TelemetryQuerySerializer:
        params = request.query_params.copy()
        data = {k: v for k, v in params.items() if k not in ("model_version", "format")}
        if "model_version" in params:
            data["model_version"] = params.getlist("model_version")
        query = cls(data=data)
        query.is_valid(raise_exception=True)
        return query

    @extend_schema(parameters=[s.TelemetryQuerySerializer], responses=s.SeriesSerializer)
    @action(detail=False, methods=["get"], renderer_classes=[JSONRenderer, SeriesCsvRenderer])
    def series(self, request: Request) -> Response:
        """Events, rate, mean score, mean latency per bucket; ``?format=csv`` for a CSV file."""
        query = self._filter(request)
        points = queries.series(query.to_filter(), query.validated_data["bucket"])
        return Response({"bucket_s": query.validated_data["bucket"], "points": points})

    @extend_schema(parameters=[s.TelemetryQuerySerializer], responses=s.LabelsSerializer)
    @action(detail=False, methods=["get"])
    def labels(self, request: Request) -> Response:
        """Label distribution (count, share, mean score per class)."""
        return Response({"labels": queries.label_distribution(self._filter(request).to_filter())})

    @extend_schema(parameters=[s.TelemetryQuerySerializer], responses=s.SummarySerializer)
    @action(detail=False, methods=["get"])
    def summary(self, request: Request) -> Response:
        """Totals over the range: events, devices, mean score and latency, latency histogram."""
        return Response(queries.summary(self._filter(request).to_filter()))

    @extend_schema(parameters=[s.CompareQuerySerializer], responses=s.CompareSerializer)
    @action(detail=False, methods=["get"])
    def compare(self, request: Request) -> Response:
        """Compare model versions ``a`` (old) and ``b`` (new): health deltas and label drift."""
        query = self._filter(request, s.CompareQuerySerializer)
        d = query.validated_data
        return Response(queries.compare_versions(query.to_filter(), d["a"], d["b"]))


class DeadLetterViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                        viewsets.GenericViewSet):
    """Device messages refused at ingest, with the reason."""

    queryset = DeadLetter.objects.all()
    serializer_class = s.DeadLetterSerializer
    filterset_fields = ["reason", "device_uid"]
    read_role = Role.VIEWER
