from django.contrib import admin

from fleet.audit.models import AuditLog


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_label", "action", "object_type", "object_repr"]
    list_filter = ["action", "object_type"]
    search_fields = ["object_repr", "actor_label"]

    def has_change_permission(self, request, obj=None) -> bool:  # the log is append-only
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
