from django.contrib import admin

from fleet.devices.models import Device, DeviceGroup, EnrollmentToken, HardwareProfile, Tag


@admin.register(HardwareProfile)
class HardwareProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "mcu", "arena_ram_bytes", "model_slot_bytes", "kernel_set"]


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ["uid", "name", "hardware_profile", "group", "state", "last_seen"]
    list_filter = ["state", "hardware_profile", "group"]
    search_fields = ["uid", "name"]
    readonly_fields = ["public_key_pem", "public_key_fingerprint", "key_algorithm"]


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "uses", "max_uses", "expires_at", "revoked_at"]
    readonly_fields = ["token_hash", "prefix", "uses"]


admin.site.register(DeviceGroup)
admin.site.register(Tag)
