"""Prometheus text exposition at /metrics: fleet state and worker counters for scrapers.

Closed unless configured: it needs ``Authorization: Bearer $METRICS_TOKEN``, or
``METRICS_PUBLIC=1`` opens it to everyone. Loopback gets no exemption (behind a reverse proxy on
the same host every caller is loopback).
"""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from fleet.devices.models import Device
from fleet.telemetry.models import DeadLetter, WorkerStats

WORKER_ALIVE = timedelta(seconds=30)


def _allowed(request: HttpRequest) -> bool:
    """Tell whether the caller may read the metrics: opened explicitly, or the right token."""
    if settings.METRICS_PUBLIC:
        return True
    token = settings.METRICS_TOKEN
    if not token:
        return False
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    # Bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def _line(name: str, value: float, **labels: str) -> str:
    if labels:
        inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def metrics(request: HttpRequest) -> HttpResponse:
    """Render the metrics page."""
    if not _allowed(request):
        return HttpResponse(
            "forbidden: send Authorization: Bearer <METRICS_TOKEN> (METRICS_PUBLIC=1 opens "
            "/metrics to everyone)\n", status=403, content_type="text/plain")
    from ota.rollouts.models import Rollout

    lines = ["# HELP fleet_devices Devices by state and hardware profile.",
             "# TYPE fleet_devices gauge"]
    for row in Device.objects.values("state", "hardware_profile__name").annotate(n=Count("id")):
        lines.append(_line("fleet_devices", row["n"], state=row["state"],
                           profile=row["hardware_profile__name"]))
    lines += ["# HELP fleet_rollouts Rollouts by state.", "# TYPE fleet_rollouts gauge"]
    for row in Rollout.objects.values("state").annotate(n=Count("id")):
        lines.append(_line("fleet_rollouts", row["n"], state=row["state"]))
    lines += ["# HELP fleet_dead_letters_total Device messages refused at ingest, by reason.",
              "# TYPE fleet_dead_letters_total counter"]
    for row in DeadLetter.objects.values("reason").annotate(n=Count("id")):
        lines.append(_line("fleet_dead_letters_total", row["n"], reason=row["reason"]))
    lines += ["# HELP fleet_worker_counter Counters of each worker since it started.",
              "# TYPE fleet_worker_counter counter",
              "# HELP fleet_worker_up 1 when the worker reported in the last 30 s.",
              "# TYPE fleet_worker_up gauge"]
    now = timezone.now()
    for stats in WorkerStats.objects.all():
        alive = now - stats.heartbeat_at < WORKER_ALIVE
        lines.append(_line("fleet_worker_up", 1 if alive else 0, worker=stats.worker))
        for name, value in sorted(stats.counters.items()):
            lines.append(_line("fleet_worker_counter", value, worker=stats.worker, counter=name))
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
