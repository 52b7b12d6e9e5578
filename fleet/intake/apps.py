from django.apps import AppConfig


class IntakeConfig(AppConfig):
    name = "fleet.intake"
    label = "intake"
    verbose_name = "Device message intake and the worker"
