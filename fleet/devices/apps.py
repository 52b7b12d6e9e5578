from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "fleet.devices"
    label = "devices"
    verbose_name = "Devices"
