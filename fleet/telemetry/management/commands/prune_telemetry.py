"""Drop raw events older than N days; rollups stay: manage.py prune_telemetry --days 30."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from fleet.telemetry.models import DeadLetter, Event


class Command(BaseCommand):
    help = "Delete raw telemetry events (and dead letters) older than --days; keep rollups."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=float, default=30.0)
        parser.add_argument("--batch", type=int, default=50_000, help="rows per delete")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["days"] <= 0:
            raise CommandError("--days must be positive")
        cutoff = timezone.now() - timedelta(days=opts["days"])
        total = 0
        while True:  # in slices: one huge DELETE would hold the database for too long
            ids = list(Event.objects.filter(ts__lt=cutoff).values_list("id", flat=True)
                       [: opts["batch"]])
            if not ids:
                break
            total += Event.objects.filter(id__in=ids).delete()[0]
        letters = DeadLetter.objects.filter(received_at__lt=cutoff).delete()[0]
        self.stdout.write(f"deleted {total} events and {letters} dead letters older than "
                          f"{cutoff:%Y-%m-%d %H:%M}")
