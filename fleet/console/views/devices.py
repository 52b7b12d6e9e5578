"""Devices: a filtered, keyset-paged list and a detail page with edit and revoke."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from fleet.audit.models import AuditLog
from fleet.console.access import console_view, render_page
from fleet.console.filters import SEEN_CHOICES, ConsoleDeviceFilterSet
from fleet.console.forms import DeviceEditForm
from fleet.console.paging import keyset_page
from fleet.console.summaries import (
    label_names_for,
    name_labels,
    package_versions,
    version_choices,
)
from fleet.devices.actions import do_revoke_device, do_update_device
from fleet.devices.choices import DeviceState
from fleet.devices.models import Device, DeviceGroup, HardwareProfile, Tag
from fleet.telemetry.queries import TelemetryFilter, label_distribution, series
from ota.models import Package

PAGE_SIZE = 50
DETAIL_RANGE = timedelta(hours=24)
DETAIL_BUCKET_S = 900


@console_view()
def device_list(request: HttpRequest) -> HttpResponse:
    """List devices matching the filters, 50 per page, ordered by uid (the unique index)."""
    queryset = Device.objects.select_related("hardware_profile", "group").prefetch_related("tags")
    filters = ConsoleDeviceFilterSet(request.GET, queryset=queryset)
    filtered = filters.qs if filters.is_valid() else Device.objects.none()
    page = keyset_page(filtered, key="uid", after=request.GET.get("after"),
                       before=request.GET.get("before"), size=PAGE_SIZE)
    versions = package_versions({d.running_package_id for d in page.items
                                 if d.running_package_id})
    for device in page.items:
        device.running_version = versions.get(device.running_package_id)
    return render_page(request, "console/devices/list.html", {
        "nav": "devices",
        "page": page,
        "filters": filters,
        "params": request.GET,
        "filtered": any(v for k, v in request.GET.items() if k not in ("after", "before")),
        "groups": DeviceGroup.objects.values_list("name", flat=True),
        "tags": Tag.objects.values_list("name", flat=True),
        "profiles": HardwareProfile.objects.values_list("name", flat=True),
        "states": DeviceState.choices,
        "versions": version_choices(),
        "seen_choices": SEEN_CHOICES,
    })


@console_view()
def device_detail(request: HttpRequest, uid: str) -> HttpResponse:
    """Show one device: status, capabilities, activity, its history; operators edit/revoke."""
    device = get_object_or_404(
        Device.objects.select_related("hardware_profile", "group", "enrolled_with"), uid=uid)
    package = (Package.objects.select_related("model_version__model")
               .filter(pk=device.running_package_id).first()
               if device.running_package_id else None)
    now = timezone.now()
    flt = TelemetryFilter(since=now - DETAIL_RANGE, until=now, device_uid=device.uid)
    labels = name_labels(label_distribution(flt), label_names_for(flt))
    tag_names = list(device.tags.values_list("name", flat=True))
    form = DeviceEditForm(initial={"name": device.name, "group": device.group,
                                   "tags": ", ".join(tag_names)})
    history = AuditLog.objects.filter(object_type="devices.device", object_id=str(device.pk))
    return render_page(request, "console/devices/detail.html", {
        "nav": "devices",
        "device": device,
        "package": package,
        "tag_names": tag_names,
        "capabilities": sorted((device.capabilities or {}).items()),
        "series": series(flt, DETAIL_BUCKET_S),
        "series_query": {"device": device.uid, "bucket": DETAIL_BUCKET_S,
                         "hours": int(DETAIL_RANGE.total_seconds() // 3600)},
        "labels": labels,
        "form": form,
        "history": history[:20],
    })


@require_POST
@console_view()
def device_edit(request: HttpRequest, uid: str) -> HttpResponse:
    """Rename a device, move it to a group, set its tags."""
    device = get_object_or_404(Device, uid=uid)
    form = DeviceEditForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        do_update_device(device, actor=request.user, name=data["name"], group=data["group"],
                         tags=data["tags"])
        messages.success(request, f"Device {device.uid} updated.")
    else:
        errors = "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
        messages.error(request, f"Not saved. {errors}")
    return redirect("console:device-detail", uid=device.uid)


@require_POST
@console_view()
def device_revoke(request: HttpRequest, uid: str) -> HttpResponse:
    """Revoke a device: it loses broker access and cannot enroll again."""
    device = get_object_or_404(Device, uid=uid)
    if device.revoked:
        messages.info(request, f"Device {device.uid} was already revoked.")
    else:
        do_revoke_device(device, actor=request.user)
        messages.success(request, f"Device {device.uid} revoked; it has lost broker access.")
    return redirect("console:device-detail", uid=device.uid)
