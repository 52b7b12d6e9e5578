"""Telemetry charts: event rate, labels, score and latency; two versions side by side."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone

from fleet.console.access import console_view, render_page
from fleet.console.forms import TelemetryForm
from fleet.console.summaries import label_names_for, version_choices
from fleet.telemetry.models import Rollup
from fleet.telemetry.queries import (
    TelemetryFilter,
    compare_versions,
    label_distribution,
    series,
    summary,
)

LIVE_REFRESH_S = 30
# Relative ranges tried, shortest first, when the page opens without one (see default_range).
_YOUNG = (("15m", timedelta(minutes=15)), ("1h", timedelta(hours=1)), ("6h", timedelta(hours=6)),
          ("24h", timedelta(hours=24)))
_QUIET = (("7d", timedelta(days=7)), ("30d", timedelta(days=30)))


def default_range(now: datetime) -> str:
    """Choose the opening range from the data: the shortest that holds all of a young fleet's
    telemetry (two minutes of data: the last 15 minutes, not one dot on a 24-hour axis), the
    last 24 hours for an established fleet, longer for one that has been quiet a while.

    Only EXISTS probes on the time-indexed rollups, so the choice stays cheap on a big fleet.
    """
    recent = Rollup.objects.filter(bucket__gte=now - _YOUNG[-1][1])
    if recent.exists():
        for choice, span in _YOUNG:
            if not Rollup.objects.filter(bucket__lt=now - span).exists():
                return choice  # nothing older than this span: all the data fits in it
        return "24h"
    for choice, span in _QUIET:
        if Rollup.objects.filter(bucket__gte=now - span).exists():
            return choice
    return "24h"


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
    query = request.GET.copy()
    if not query.get("range"):
        query["range"] = default_range(timezone.now())
    form = TelemetryForm(query, versions=versions)
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
