"""Health gates: compare the new version with the old one on the same devices, from telemetry.

The baseline is the old version's telemetry on the same devices in the hour before the wave
started. A fleet on its factory model (package 0, stored as model version 0) has no "old
version" in the registry; then, and whenever the old version's telemetry is too thin to
judge, the baseline is the same devices' own telemetry of any other version in the window the
rollout recorded when it started (``Rollout.baseline_from`` .. ``baseline_until``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Sum

from fleet.telemetry.models import Rollup

BEFORE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Cohort:
    """Telemetry totals of one model version on a set of devices over a time range."""

    events: int
    score_sum: int
    latency_sum: int
    seconds: float
    labels: dict[int, int]

    @property
    def mean_score(self) -> float:
        return self.score_sum / self.events if self.events else 0.0

    @property
    def mean_latency(self) -> float:
        return self.latency_sum / self.events if self.events else 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def cohort(device_ids: list[int], model_version_ids: list[int], since: datetime,
           until: datetime) -> Cohort:
    """Sum the rollups of ``device_ids`` running ``model_version_ids`` in [since, until)."""
    rows = (Rollup.objects.filter(device_id__in=device_ids, model_version_id__in=model_version_ids,
                                  bucket__gte=since, bucket__lt=until)
            .values("label").annotate(n=Sum("count"), s=Sum("score_sum"), lat=Sum("latency_sum")))
    labels, events, score, latency = {}, 0, 0, 0
    for row in rows:
        labels[row["label"]] = row["n"]
        events += row["n"]
        score += row["s"]
        latency += row["lat"]
    return Cohort(events, score, latency, max((until - since).total_seconds(), 1.0), labels)


def cohort_before(device_ids: list[int], new_version_id: int, since: datetime,
                  until: datetime) -> Cohort:
    """Sum the rollups of ``device_ids`` in [since, until) of every version but the new one.

    Version 0 (a factory model, or a package the server did not know) included: this is
    "what these devices did before", whatever they ran.
    """
    rows = (Rollup.objects.filter(device_id__in=device_ids, bucket__gte=since, bucket__lt=until)
            .exclude(model_version_id=new_version_id)
            .values("label").annotate(n=Sum("count"), s=Sum("score_sum"), lat=Sum("latency_sum")))
    labels, events, score, latency = {}, 0, 0, 0
    for row in rows:
        labels[row["label"]] = labels.get(row["label"], 0) + row["n"]
        events += row["n"]
        score += row["s"]
        latency += row["lat"]
    return Cohort(events, score, latency, max((until - since).total_seconds(), 1.0), labels)


def tripped_gates(rollout: object, old: Cohort, new: Cohort) -> list[str]:
    """Return the health gates the new version trips against the old one (empty: healthy)."""
    reasons: list[str] = []
    drop = getattr(rollout, "max_score_drop", None)
    if drop is not None and old.mean_score - new.mean_score > drop:
        reasons.append(f"mean score fell {old.mean_score:.1f} -> {new.mean_score:.1f} "
                       f"(more than {drop:g})")
    shift = getattr(rollout, "max_label_shift", None)
    if shift is not None:
        keys = set(old.labels) | set(new.labels)
        tvd = sum(abs(old.labels.get(k, 0) / max(old.events, 1)
                      - new.labels.get(k, 0) / max(new.events, 1)) for k in keys) / 2
        if tvd > shift:
            reasons.append(f"label distribution shifted by {tvd:.2f} (more than {shift:g})")
    rise = getattr(rollout, "max_latency_rise", None)
    if rise is not None and old.mean_latency and new.mean_latency > old.mean_latency * (1 + rise):
        reasons.append(f"mean latency rose {old.mean_latency / 10:.1f} -> "
                       f"{new.mean_latency / 10:.1f} ms (more than {rise:.0%})")
    rate_drop = getattr(rollout, "max_rate_drop", None)
    if rate_drop is not None and old.rate and new.rate < old.rate * (1 - rate_drop):
        reasons.append(f"event rate fell {old.rate:.2f} -> {new.rate:.2f}/s "
                       f"(more than {rate_drop:.0%})")
    return reasons
