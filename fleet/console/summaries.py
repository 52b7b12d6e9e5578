"""Read-only figures the console shows: fleet counts, running versions, ingest health.

Nothing here writes; every query aggregates in the database (GROUP BY on indexed columns), so
the overview stays cheap with 100k devices.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone

from fleet.devices.choices import DeviceState
from fleet.devices.models import Device
from fleet.telemetry.models import WorkerStats
from fleet.telemetry.queries import TelemetryFilter, summary
from ota.models import Model, ModelVersion, Package

# A worker writes its counters every few seconds; silence for this long means it is gone.
WORKER_ALIVE_WITHIN = timedelta(seconds=60)
INGEST_WINDOW = timedelta(minutes=5)
STATES = [s.value for s in DeviceState]


def device_state_counts() -> dict[str, int]:
    """Count devices per state (``enrolled`` is "never seen"), plus ``total``."""
    counts = dict.fromkeys(STATES, 0)
    for row in Device.objects.order_by().values("state").annotate(n=Count("id")):
        counts[row["state"]] = row["n"]
    counts["total"] = sum(counts[s] for s in STATES)
    return counts


def devices_by_profile() -> list[dict[str, Any]]:
    """Count devices per hardware profile and state, largest profile first."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys([*STATES, "total"], 0))
    rows = (Device.objects.order_by().values("hardware_profile__name", "state")
            .annotate(n=Count("id")))
    for row in rows:
        entry = table[row["hardware_profile__name"]]
        entry[row["state"]] += row["n"]
        entry["total"] += row["n"]
    return sorted(({"profile": name, **counts} for name, counts in table.items()),
                  key=lambda r: (-r["total"], r["profile"]))


def package_versions(package_ids: set[int]) -> dict[int, ModelVersion]:
    """Map package ids to the model versions they carry (one query)."""
    packages = (Package.objects.filter(id__in=package_ids)
                .select_related("model_version__model").only(
                    "id", "model_version__id", "model_version__version",
                    "model_version__model__name"))
    return {p.id: p.model_version for p in packages}


def devices_by_version() -> list[dict[str, Any]]:
    """Count non-revoked devices per model version they report running, most common first.

    Devices report a package id; packages of one version for different profiles add up.
    """
    rows = list(Device.objects.order_by().exclude(state=DeviceState.REVOKED)
                .values("running_package_id").annotate(n=Count("id")))
    versions = package_versions({r["running_package_id"] for r in rows if r["running_package_id"]})
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        pkg = row["running_package_id"]
        mv = versions.get(pkg) if pkg else None
        if mv is not None:
            key, label, mv_id = f"mv{mv.id}", str(mv), mv.id
        elif pkg:
            key, label, mv_id = f"pkg{pkg}", f"unknown package #{pkg}", None
        else:
            key, label, mv_id = "none", "no model reported", None
        entry = merged.setdefault(key, {"label": label, "model_version_id": mv_id, "devices": 0})
        entry["devices"] += row["n"]
    total = sum(e["devices"] for e in merged.values()) or 1
    result = sorted(merged.values(), key=lambda e: (-e["devices"], e["label"]))
    for entry in result:
        entry["share"] = entry["devices"] / total
    return result


@dataclass(frozen=True)
class WorkerFigures:
    """One worker's counters as the console shows them."""

    name: str
    alive: bool
    heartbeat_at: datetime
    uptime_s: float
    events_stored: int
    batches_stored: int
    duplicates: int
    rejected: int

    @property
    def events_per_s(self) -> float:
        """Return the mean ingest rate since the worker started."""
        return self.events_stored / self.uptime_s if self.uptime_s > 0 else 0.0


def worker_figures(now: datetime | None = None) -> list[WorkerFigures]:
    """Return every worker's counters, live ones first."""
    now = now or timezone.now()
    result = []
    for stats in WorkerStats.objects.order_by("-heartbeat_at")[:50]:
        c = stats.counters or {}
        result.append(WorkerFigures(
            name=stats.worker,
            alive=now - stats.heartbeat_at <= WORKER_ALIVE_WITHIN,
            heartbeat_at=stats.heartbeat_at,
            uptime_s=max((stats.heartbeat_at - stats.started_at).total_seconds(), 0.0),
            events_stored=int(c.get("events_stored", 0)),
            batches_stored=int(c.get("batches_stored", 0)),
            duplicates=int(c.get("batches_duplicate", 0)),
            rejected=sum(int(v) for k, v in c.items() if k.startswith("rejected_")),
        ))  # fmt: skip
    return sorted(result, key=lambda w: (not w.alive, w.name))


def recent_ingest(now: datetime | None = None) -> dict[str, Any]:
    """Summarise telemetry of the last five minutes (events/s, devices reporting)."""
    now = now or timezone.now()
    return summary(TelemetryFilter(since=now - INGEST_WINDOW, until=now))


def version_choices() -> list[tuple[int, str]]:
    """Return (id, "model@version") of every model version, newest first within a model."""
    versions = ModelVersion.objects.select_related("model").only(
        "id", "version", "model__name").order_by("model__name", "-created_at")
    return [(mv.id, str(mv)) for mv in versions]


def label_names_for(flt: TelemetryFilter, version_id: int | None = None) -> list[str]:
    """Return class names for a telemetry selection (empty when they cannot be known).

    The chosen version's model decides; without one, the names are known when every version
    in the selection belongs to one model (labels are per model, by output index).
    """
    if version_id is not None:
        ids = [version_id]
    else:
        ids = list(flt.rollups().order_by().values_list("model_version_id", flat=True)
                   .distinct()[:50])
    models = list(Model.objects.filter(versions__id__in=ids).distinct()[:2])
    return list(models[0].labels) if len(models) == 1 else []


def name_labels(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Add each label row's class name ("class 3" when the model does not name it)."""
    for row in rows:
        index = row["label"]
        row["name"] = names[index] if 0 <= index < len(names) else f"class {index}"
    return rows
