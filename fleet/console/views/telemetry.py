"""Telemetry charts: event rate, labels, score and latency; two versions side by side."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from fleet.console.access import console_view, render_page
from fleet.console.forms import TelemetryForm
from fleet.console.summaries import label_names_for, version_choices
from fleet.telemetry.queries import (
    TelemetryFilter,
    compare_versions,
    label_distribution,
    series,
    summary,
)

LIVE_REFRESH_S = 30


def _api_params(form: TelemetryForm) -> dict[str, Any]:
    """Return the device/version selection as telemetry API query parameters."""
    data = form.cleaned_data
    params: dict[str, Any] = {}
    if data["device"]:
        params["device"] = data["device"]
    if data["group"]:
        params["group"] = data["group"].name
    if data["hardware_profile"]:
        params["hardware_profile"] = data["hardware_profile"].name
    if data["model_version"] is not None:
        params["model_version"] = data["model_version"]
    return params


@console_view()
def telemetry(request: HttpRequest) -> HttpResponse:
    """Chart the selected devices' telemetry over a range; compare two versions if asked."""
    versions = version_choices()
    form = TelemetryForm(request.GET or {"range": "24h"}, versions=versions)
    context: dict[str, Any] = {"nav": "telemetry", "form": form}
    if not form.is_valid():
        return render_page(request, "console/telemetry.html", context, status=400)
    data = form.cleaned_data
    since, until, bucket = form.window()
    selection = _api_params(form)
    flt = TelemetryFilter(
        since=since, until=until, device_uid=selection.get("device"),
        group=selection.get("group"), hardware_profile=selection.get("hardware_profile"),
        model_version_ids=[data["model_version"]] if data["model_version"] is not None else [],
    )
    compare = None
    if data["a"] is not None and data["b"] is not None:
        compare = compare_versions(flt, data["a"], data["b"])
    names = label_names_for(flt, data["model_version"] if data["model_version"] is not None
                            else data["a"])
    window = {"since": since.isoformat(), "until": until.isoformat(), "bucket": bucket}
    csv_query = urlencode({**selection, **window, "format": "csv"})
    context.update({
        "since": since, "until": until, "bucket": bucket,
        "summary": summary(flt),
        "compare": compare,
        "version_names": dict(versions),
        "csv_url": f"{reverse('telemetry-series')}?{csv_query}",
        "chart_data": {
            "series": series(flt, bucket),
            "labels": label_distribution(flt),
            "label_names": names,
            "compare": compare,
            "bucket": bucket,
            # A relative range ("last 24 h") refreshes itself; a custom one is fixed.
            "live": data["range"] != "custom",
            "span_s": int((until - since).total_seconds()),
            "refresh_s": LIVE_REFRESH_S,
            "api": {"series": reverse("telemetry-series"),
                    "labels": reverse("telemetry-labels"),
                    "summary": reverse("telemetry-summary")},
            "params": selection,
        },
    })
    return render_page(request, "console/telemetry.html", context)
