from rest_framework import serializers

from fleet.audit.models import AuditLog


class AuditLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditLog
        fields = [
            "id", "created_at", "actor_label", "action", "object_type", "object_id",
            "object_repr", "before", "after", "remote_addr",
        ]
