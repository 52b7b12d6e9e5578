"""Read-side summaries of a rollout: per-wave counts for the API and the console."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db.models import Count

from device_sdk.protocol.ota_messages import DeploymentState
from ota.rollouts.models import Deployment, Rollout


def wave_progress(rollout: Rollout) -> list[dict[str, Any]]:
    """Return, per wave, its percentage and how many of its devices are in each state."""
    rows = (Deployment.objects.filter(rollout=rollout).values("wave", "state")
            .annotate(n=Count("id")))
    per_wave: dict[int, dict[str, int]] = defaultdict(lambda: {s.name.lower(): 0
                                                               for s in DeploymentState})
    for row in rows:
        per_wave[row["wave"]][DeploymentState(row["state"]).name.lower()] = row["n"]
    out = []
    for index, percent in enumerate(rollout.waves):
        counts = per_wave[index]
        out.append({"wave": index + 1, "percent": percent, "devices": sum(counts.values()),
                    "current": index == rollout.current_wave, **counts})
    return out


def failure_reasons(rollout: Rollout) -> dict[str, int]:
    """Count failed devices by reason name."""
    from device_sdk.protocol.reasons import reason_name

    rows = (Deployment.objects.filter(rollout=rollout, state=DeploymentState.FAILED)
            .values("reason").annotate(n=Count("id")))
    return {reason_name(r["reason"]): r["n"] for r in rows}
