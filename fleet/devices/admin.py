"""Django admin for the devices app: raw data to look at; security-relevant changes only
through the actions (audit entry, broker revoke), never by editing rows.

Devices and claim tokens are read-only here (no add, edit or delete: a deleted or edited
device would keep its broker credential and leave no audit entry); revoking is an admin action
that calls :func:`fleet.devices.actions.do_revoke_device` or
:func:`~fleet.devices.actions.do_revoke_enrollment_token` as the logged-in user.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.core.errors import Refused
from fleet.devices.actions import do_revoke_device, do_revoke_enrollment_token
from fleet.devices.models import Device, DeviceGroup, EnrollmentToken, HardwareProfile, Tag


@admin.register(HardwareProfile)
class HardwareProfileAdmin(admin.ModelAdmin):
    list_display = ("name", "mcu", "arena_ram_bytes", "model_slot_bytes", "kernel_set")


class ActionsOnlyAdmin(admin.ModelAdmin):
    """Every field read-only, no add, edit or delete; changes come through admin actions."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.get_fields()
                if f.concrete and not f.auto_created] + [
            f.name for f in self.model._meta.many_to_many]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Who may run the revoke action: whoever Django would let change the rows."""
        opts = self.model._meta
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")


@admin.register(Device)
class DeviceAdmin(ActionsOnlyAdmin):
    list_display = ("uid", "name", "hardware_profile", "group", "state", "last_seen")
    list_filter = ("state", "hardware_profile", "group")
    search_fields = ("uid", "name")
    actions = ("revoke_devices",)

    @admin.action(description="Revoke selected devices (audited; broker access removed)",
                  permissions=["revoke"])
    def revoke_devices(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        """Revoke each selected device through the revoke action."""
        done = 0
        for device in queryset:
            try:
                do_revoke_device(device, actor=request.user)
                done += 1
            except Refused as exc:
                self.message_user(request, f"{device.uid}: {exc.detail}", messages.ERROR)
        if done:
            self.message_user(request, f"Revoked {done} device(s).", messages.SUCCESS)


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(ActionsOnlyAdmin):
    list_display = ("prefix", "name", "uses", "max_uses", "expires_at", "revoked_at")
    actions = ("revoke_tokens",)

    @admin.action(description="Revoke selected claim tokens (audited)", permissions=["revoke"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[EnrollmentToken]) -> None:
        """Revoke each selected claim token through the revoke action."""
        for token in queryset:
            do_revoke_enrollment_token(token, actor=request.user)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)


admin.site.register(DeviceGroup)
admin.site.register(Tag)
