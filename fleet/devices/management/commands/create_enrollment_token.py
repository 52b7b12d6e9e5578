"""Create a claim token: manage.py create_enrollment_token --max-uses 50 --group lab."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from fleet.devices.actions import do_create_enrollment_token
from fleet.devices.models import DeviceGroup, HardwareProfile


class Command(BaseCommand):
    help = "Create an enrollment (claim) token and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", default="")
        parser.add_argument("--max-uses", type=int, default=1)
        parser.add_argument("--days", type=float, default=7.0, help="validity in days")
        parser.add_argument("--group", help="group name; created if missing")
        parser.add_argument("--hardware", help="restrict to one hardware profile")
        parser.add_argument("--uid-pattern", default="",
                            help="regular expression every enrolled uid must match (a factory "
                                 "line's serial format); without it or --allow-uid a batch "
                                 "token enrolls key-derived uids only")
        parser.add_argument("--allow-uid", action="append", default=[],
                            help="a uid the token may enroll (repeat); the only ones then")

    def handle(self, *args: Any, **opts: Any) -> None:
        group = None
        if opts["group"]:
            group, _ = DeviceGroup.objects.get_or_create(name=opts["group"])
        profile = None
        if opts["hardware"]:
            profile = HardwareProfile.objects.filter(name=opts["hardware"]).first()
            if profile is None:
                raise CommandError(f"no hardware profile named {opts['hardware']!r}")
        if opts["max_uses"] < 1:
            raise CommandError("--max-uses must be at least 1")
        try:
            re.compile(opts["uid_pattern"])
        except re.error as exc:
            raise CommandError(f"--uid-pattern is not a regular expression: {exc}") from None
        _, plain = do_create_enrollment_token(
            actor=None,
            expires_at=timezone.now() + timedelta(days=opts["days"]),
            max_uses=opts["max_uses"],
            name=opts["name"],
            group=group,
            hardware_profile=profile,
            uid_pattern=opts["uid_pattern"],
            allowed_uids=opts["allow_uid"],
        )
        self.stdout.write(plain)
