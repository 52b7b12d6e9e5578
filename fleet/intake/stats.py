"""Publish a worker's counters to the database so /metrics and the console can read them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from django.utils import timezone

from fleet.telemetry.models import WorkerStats


def save_worker_stats(worker: str, started_at: datetime, counters: Counter[str]) -> None:
    """Write this worker's counters (totals since it started) and a heartbeat.

    A worker that reports is alive: any drain claim or retirement of its name is cleared (a
    drain under way then fails to mark it retired; fleet/intake/drain.py).
    """
    WorkerStats.objects.update_or_create(
        worker=worker,
        defaults={"started_at": started_at, "heartbeat_at": timezone.now(),
                  "counters": dict(counters), "drained_by": "", "drain_until": None,
                  "retired_at": None},
    )
