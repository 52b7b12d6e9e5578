"""Drop raw events older than N days, and dedupe keys past the redelivery horizon; rollups stay.

manage.py prune_telemetry --days 30 [--dedupe-days 7]

On PostgreSQL with partitioned raw events (migration 0007) whole day partitions go (a day
partition is dropped once all of its day is older than the cutoff, so up to a day more is kept);
only the legacy and default partitions are pruned row by row. It also makes the partitions of
the coming days, like the worker does.

What queries read is derived from rollups, which stay: the fleet-wide, segment (fleet, group,
profile) rollups and reporting spans their triggers keep (migrations 0008–0010). Deleting
rollups, should a rollup retention come, updates those in the same statement.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from fleet.telemetry import partitions
from fleet.telemetry.models import DeadLetter, Event, IngestedBatch

DEDUPE_DAYS = 7.0


class Command(BaseCommand):
    help = "Delete raw telemetry events (and dead letters) older than --days; keep rollups."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=float, default=30.0)
        parser.add_argument("--batch", type=int, default=50_000, help="rows per delete")
        parser.add_argument(
            "--dedupe-days", type=float, default=DEDUPE_DAYS,
            help="keep (device, seq) keys this long: longer than any message can come back "
                 "(the worker's broker session lives 1 day; devices resend what the broker "
                 "could not deliver from their outbox within hours)")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["days"] <= 0:
            raise CommandError("--days must be positive")
        cutoff = timezone.now() - timedelta(days=opts["days"])
        created = partitions.ensure_partitions()
        started = time.monotonic()
        dropped = partitions.drop_partitions_before(cutoff)
        drop_s = time.monotonic() - started
        total = 0
        for table in partitions.row_pruned_tables():
            while True:  # in slices: one huge DELETE would hold the database for too long
                deleted = _delete_slice(cutoff, opts["batch"], table)
                if not deleted:
                    break
                total += deleted
        letters = DeadLetter.objects.filter(received_at__lt=cutoff).delete()[0]
        if opts["dedupe_days"] < 1:
            raise CommandError("--dedupe-days must be at least 1 (the redelivery horizon)")
        horizon = timezone.now() - timedelta(days=opts["dedupe_days"])
        keys = 0
        while True:
            ids = list(IngestedBatch.objects.filter(received_at__lt=horizon)
                       .values_list("id", flat=True)[:opts["batch"]])
            if not ids:
                break
            keys += IngestedBatch.objects.filter(id__in=ids).delete()[0]
        if created or dropped:
            self.stdout.write(f"partitions: created {', '.join(created) or 'none'}; dropped "
                              f"{', '.join(dropped) or 'none'} in {drop_s:.2f} s")
        self.stdout.write(f"deleted {total} events and {letters} dead letters older than "
                          f"{cutoff:%Y-%m-%d %H:%M}, {keys} dedupe keys older than "
                          f"{horizon:%Y-%m-%d %H:%M}")


def _delete_slice(cutoff: datetime, limit: int, table: str = "telemetry_event") -> int:
    """Delete up to ``limit`` raw events older than ``cutoff`` from ``table`` (the raw event
    table or one of its partitions); return how many went.

    On PostgreSQL raw events have no index on ``id`` (migration 0004), so a slice is picked by
    physical row (``ctid``) from a scan that the BRIN on ``ts`` keeps to the old pages.
    """
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM"
                f" {table} WHERE ts < %s LIMIT %s))", [cutoff, limit])
            return cursor.rowcount
    ids = list(Event.objects.filter(ts__lt=cutoff).values_list("id", flat=True)[:limit])
    return Event.objects.filter(id__in=ids).delete()[0] if ids else 0
