"""Filters of the console's lists, built on the apps' own filter sets."""

from __future__ import annotations

from datetime import timedelta

import django_filters
from django.db.models import Q, QuerySet
from django.utils import timezone

from fleet.devices.choices import DeviceState
from fleet.devices.filtersets import DeviceFilterSet
from fleet.devices.models import Device
from ota.models import Package

SEEN_CHOICES = [("5m", "in the last 5 minutes"), ("1h", "in the last hour"),
                ("24h", "in the last 24 hours"), ("stale", "more than 24 hours ago"),
                ("never", "never")]
_SEEN_WITHIN = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "24h": timedelta(days=1)}


class ConsoleDeviceFilterSet(DeviceFilterSet):
    """The API's device filters plus search, running model version and a last-seen window."""

    # The API's state filter adds DISTINCT (a full sort of every match); a plain column needs none.
    state = django_filters.MultipleChoiceFilter(choices=DeviceState.choices, distinct=False)
    q = django_filters.CharFilter(method="search")
    model_version = django_filters.NumberFilter(method="running_version")
    seen = django_filters.ChoiceFilter(choices=SEEN_CHOICES, method="seen_within")

    def search(self, qs: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        # A uid prefix uses the unique index; names are short, so a contains scan stays cheap.
        return qs.filter(Q(uid__istartswith=value) | Q(name__icontains=value))

    def running_version(self, qs: QuerySet[Device], name: str, value: int) -> QuerySet[Device]:
        return qs.filter(running_package_id__in=Package.objects.filter(model_version_id=value)
                         .values("id"))

    def seen_within(self, qs: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        now = timezone.now()
        if value == "never":
            return qs.filter(last_seen__isnull=True)
        if value == "stale":
            return qs.filter(last_seen__lt=now - timedelta(days=1))
        return qs.filter(last_seen__gte=now - _SEEN_WITHIN[value])
