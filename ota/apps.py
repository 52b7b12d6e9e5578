from django.apps import AppConfig


class OtaConfig(AppConfig):
    name = "ota"
    label = "ota"
    verbose_name = "Models and OTA"
