"""List devices: manage.py list_devices [--group G] [--state online] [--json]."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from fleet.devices.models import Device


class Command(BaseCommand):
    help = "List enrolled devices, one per line (or JSON lines)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--group")
        parser.add_argument("--state")
        parser.add_argument("--hardware")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        qs = Device.objects.select_related("hardware_profile", "group").order_by("uid")
        if opts["group"]:
            qs = qs.filter(group__name=opts["group"])
        if opts["state"]:
            qs = qs.filter(state=opts["state"])
        if opts["hardware"]:
            qs = qs.filter(hardware_profile__name=opts["hardware"])
        for d in qs.iterator():
            row = {
                "uid": d.uid, "hardware": d.hardware_profile.name,
                "group": d.group.name if d.group else None, "state": d.state,
                "last_seen": d.last_seen.isoformat() if d.last_seen else None,
                "firmware": d.firmware_version,
            }
            if opts["json"]:
                self.stdout.write(json.dumps(row))
            else:
                self.stdout.write(
                    f"{d.uid:<24} {row['hardware']:<26} {row['group'] or '-':<12} "
                    f"{d.state:<9} {row['last_seen'] or 'never'}"
                )
