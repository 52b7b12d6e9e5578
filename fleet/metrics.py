"""Prometheus exposition at /metrics: fleet state and worker counters for scrapers.

Rendered by ``prometheus_client`` from a registry of its own (not the library's global one:
nothing else of the process leaks into the page) holding one custom collector, which reads
the database at scrape time, so every web process answers the same and keeps no state:

| metric | type | labels |
|---|---|---|
| ``fleet_devices`` | gauge | ``profile``, ``state`` |
| ``fleet_rollouts`` | gauge | ``state`` |
| ``fleet_dead_letters_total`` | counter | ``reason`` |
| ``fleet_worker_up`` | gauge (1: reported within 30 s; retired workers left out) | ``worker`` |
| ``fleet_workers_retired`` | gauge (dead workers whose session a peer drained) | |
| ``fleet_worker_counter`` | untyped (each worker's counters since it started) | ``counter``, ``worker`` |

A worker's drains of dead peers show in its counters (``worker_sessions_drained``,
``worker_drained_messages``, ``worker_drains_interrupted``, ``worker_drains_failed``).
``fleet_worker_counter`` keeps its name from before prometheus_client, so it is exposed untyped:
as a counter the client library would rename its samples ``fleet_worker_counter_total``.

Closed unless configured: it needs ``Authorization: Bearer $METRICS_TOKEN``, or
``METRICS_PUBLIC=1`` opens it to everyone. Loopback gets no exemption (behind a reverse proxy on
the same host every caller is loopback).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from fleet.devices.models import Device
from fleet.telemetry.models import DeadLetter, WorkerStats

WORKER_ALIVE = timedelta(seconds=30)


class FleetCollector(Collector):
    """Read devices, rollouts, dead letters and worker stats from the database per scrape."""

    def collect(self) -> Iterator[Metric]:
        from ota.rollouts.models import Rollout

        devices = GaugeMetricFamily("fleet_devices", "Devices by state and hardware profile.",
                                    labels=["profile", "state"])
        for row in Device.objects.values("state", "hardware_profile__name").annotate(
                n=Count("id")):
            devices.add_metric([row["hardware_profile__name"], row["state"]], row["n"])
        yield devices

        rollouts = GaugeMetricFamily("fleet_rollouts", "Rollouts by state.", labels=["state"])
        for row in Rollout.objects.values("state").annotate(n=Count("id")):
            rollouts.add_metric([row["state"]], row["n"])
        yield rollouts

        dead = CounterMetricFamily("fleet_dead_letters",
                                   "Device messages refused at ingest, by reason.",
                                   labels=["reason"])
        for row in DeadLetter.objects.values("reason").annotate(n=Count("id")):
            dead.add_metric([row["reason"]], row["n"])
        yield dead

        up = GaugeMetricFamily("fleet_worker_up", "1 when the worker reported in the last 30 s.",
                               labels=["worker"])
        counters = UnknownMetricFamily("fleet_worker_counter",
                                       "Counters of each worker since it started.",
                                       labels=["counter", "worker"])
        retired = GaugeMetricFamily(
            "fleet_workers_retired",
            "Dead workers whose broker session a live peer drained (fleet/intake/drain.py).")
        now = timezone.now()
        gone = 0
        for stats in WorkerStats.objects.order_by("worker"):
            if stats.retired_at is not None:
                gone += 1  # not expected up: no fleet_worker_up to alert on forever
            else:
                up.add_metric([stats.worker],
                              1 if now - stats.heartbeat_at < WORKER_ALIVE else 0)
            for name, value in sorted(stats.counters.items()):
                counters.add_metric([name, stats.worker], value)
        retired.add_metric([], gone)
        yield up
        yield retired
        yield counters


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(FleetCollector())


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


def metrics(request: HttpRequest) -> HttpResponse:
    """Render the metrics page."""
    if not _allowed(request):
        return HttpResponse(
            "forbidden: send Authorization: Bearer <METRICS_TOKEN> (METRICS_PUBLIC=1 opens "
            "/metrics to everyone)\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
