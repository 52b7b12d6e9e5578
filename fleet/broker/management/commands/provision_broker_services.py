"""Give the worker its broker identity: manage.py provision_broker_services."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from fleet.broker.access import ServiceRole
from fleet.broker.configured import broker_access


class Command(BaseCommand):
    help = "Create or update the worker's MQTT identity (MQTT_WORKER_USERNAME/PASSWORD)."

    def handle(self, *args: Any, **opts: Any) -> None:
        access = broker_access()
        if access is None:
            raise CommandError("no broker configured (set MQTT_ADMIN_PASSWORD)")
        if not settings.MQTT_WORKER_PASSWORD:
            raise CommandError("MQTT_WORKER_PASSWORD is not set")
        access.provision_service(settings.MQTT_WORKER_USERNAME, settings.MQTT_WORKER_PASSWORD,
                                 ServiceRole.WORKER)
        self.stdout.write(f"worker identity {settings.MQTT_WORKER_USERNAME} ready")
