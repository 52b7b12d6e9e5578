"""Filters for the devices app's lists, one class per listable model."""

from typing import Any

import django_filters

from fleet.core.filters import UtcIsoDateTimeFilter
from fleet.devices.choices import DeviceState, KernelSet
from fleet.devices.models import Device, EnrollmentToken, HardwareProfile


class DeviceFilterSet(django_filters.FilterSet):
    hardware_profile = django_filters.CharFilter(field_name="hardware_profile__name")
    group = django_filters.CharFilter(field_name="group__name")
    tag = django_filters.CharFilter(field_name="tags__name")
    # distinct=False: one row per device already (the default DISTINCT made every count
    # compare whole rows: 50 ms of a state-filtered page at 100,000 devices).
    state = django_filters.MultipleChoiceFilter(choices=DeviceState.choices, distinct=False)
    revoked = django_filters.BooleanFilter(field_name="revoked_at", lookup_expr="isnull",
                                           exclude=True)
    last_seen_after = UtcIsoDateTimeFilter(field_name="last_seen", lookup_expr="gte")
    last_seen_before = UtcIsoDateTimeFilter(field_name="last_seen", lookup_expr="lt")
    capability_issues = django_filters.BooleanFilter(
        method="filter_capability_issues",
        help_text="true: only devices whose capabilities contradict their profile")

    class Meta:
        model = Device
        fields = ["hardware_profile", "group", "tag", "state", "firmware_version", "tflm_version"]

    def filter_capability_issues(self, queryset: Any, name: str, value: bool | None) -> Any:
        if value is None:
            return queryset
        clean = queryset.filter(capability_issues=[])
        return queryset.exclude(pk__in=clean.values("pk")) if value else clean


class HardwareProfileFilterSet(django_filters.FilterSet):
    kernel_set = django_filters.ChoiceFilter(choices=KernelSet.choices)

    class Meta:
        model = HardwareProfile
        fields = ["name", "kernel_set", "pointer_bits"]


class EnrollmentTokenFilterSet(django_filters.FilterSet):
    group = django_filters.CharFilter(field_name="group__name")
    revoked = django_filters.BooleanFilter(field_name="revoked_at", lookup_expr="isnull",
                                           exclude=True)

    class Meta:
        model = EnrollmentToken
        fields = ["group", "revoked"]
