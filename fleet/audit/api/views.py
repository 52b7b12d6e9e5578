from rest_framework import viewsets

from fleet.core.roles import Role
from fleet.audit.api.serializers import AuditLogSerializer
from fleet.audit.filtersets import AuditLogFilterSet
from fleet.audit.models import AuditLog


class AuditLogViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log, newest first. Read-only for everyone: entries are never edited."""

    queryset = AuditLog.objects.all()
    serializer_class = AuditLogSerializer
    filterset_class = AuditLogFilterSet
    search_fields = ["object_repr", "actor_label", "action"]
    ordering_fields = ["created_at"]
    read_role = Role.VIEWER
