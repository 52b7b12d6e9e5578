"""Rollouts: for now the signed packages a rollout can target.

The rollout engine (``ota.rollouts``) is being built; when it lands, ``active_rollouts`` returns
its running rollouts (the overview shows them with progress bars) and this page gains the
rollout list, the create form and live per-wave progress.
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse

from fleet.console.access import console_view, render_page
from ota.models import Package


def active_rollouts() -> list[dict[str, Any]]:
    """Return running rollouts as {name, url, state, done, total, percent} for progress bars.

    Empty until the rollout engine exists; the overview template already renders the shape.
    """
    return []


@console_view()
def rollouts(request: HttpRequest) -> HttpResponse:
    """List the signed packages (newest first) that rollouts will target."""
    packages = Package.objects.select_related(
        "model_version__model", "hardware_profile", "base_version", "signing_key").order_by("-id")
    page = Paginator(packages, 50).get_page(request.GET.get("page"))
    return render_page(request, "console/rollouts.html", {
        "nav": "rollouts",
        "packages": page,
        "active_rollouts": active_rollouts(),
    })
