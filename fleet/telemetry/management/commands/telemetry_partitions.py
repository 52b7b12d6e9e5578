"""Make the raw event table's day partitions ahead of time and list them (PostgreSQL).

manage.py telemetry_partitions [--days-ahead 3]

The worker does this every hour; run it from cron where no worker runs. On SQLite (one plain
table) it says so and does nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from fleet.telemetry import partitions


class Command(BaseCommand):
    help = "Create the raw event table's partitions for today and the next days; list them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days-ahead", type=int, default=partitions.DAYS_AHEAD)

    def handle(self, *args: Any, **opts: Any) -> None:
        if not partitions.is_partitioned():
            self.stdout.write("telemetry_event is not partitioned (SQLite, or before migration "
                              "0007): nothing to do")
            return
        created = partitions.ensure_partitions(opts["days_ahead"])
        self.stdout.write(f"created: {', '.join(created) or 'none'}")
        for p in partitions.partitions():
            bounds = "DEFAULT" if p.is_default else f"[{p.lower or 'MINVALUE'}, {p.upper})"
            self.stdout.write(f"{p.name} {bounds}")
