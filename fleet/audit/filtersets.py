"""Filters for the audit log list."""

import django_filters

from fleet.audit.models import AuditLog
from fleet.core.filters import UtcIsoDateTimeFilter


class AuditLogFilterSet(django_filters.FilterSet):
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    action = django_filters.CharFilter(lookup_expr="startswith")

    class Meta:
        model = AuditLog
        fields = ["action", "actor_label", "object_type", "object_id"]
