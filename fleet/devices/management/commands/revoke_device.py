"""Revoke a device: manage.py revoke_device UID (also retries a failed broker revoke)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.broker.configured import broker_access
from fleet.devices.actions import do_revoke_device
from fleet.devices.models import Device


class Command(BaseCommand):
    help = "Revoke a device and remove its broker access."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("uid")

    def handle(self, *args: Any, **opts: Any) -> None:
        device = Device.objects.filter(uid=opts["uid"]).first()
        if device is None:
            raise CommandError(f"no device {opts['uid']!r}")
        was_revoked = device.revoked
        do_revoke_device(device, actor=None)
        access = broker_access()
        if was_revoked and access is not None:
            access.revoke_device(device.uid)  # idempotent: retries a broker revoke that failed
        self.stdout.write(f"revoked {device.uid}")
