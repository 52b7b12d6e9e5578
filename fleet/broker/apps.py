from django.apps import AppConfig


class BrokerConfig(AppConfig):
    name = "fleet.broker"
    label = "broker"
    verbose_name = "MQTT broker administration"
