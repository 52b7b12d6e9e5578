"""The fleet overview: device counts, running versions, ingest health, recent changes."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from fleet.audit.models import AuditLog
from fleet.console import summaries
from fleet.console.access import console_view, render_page
from fleet.console.views.rollouts import active_rollouts


@console_view()
def overview(request: HttpRequest) -> HttpResponse:
    """Show the state of the fleet at a glance."""
    states = summaries.device_state_counts()
    return render_page(request, "console/overview.html", {
        "nav": "overview",
        "states": states,
        "by_profile": summaries.devices_by_profile(),
        "by_version": summaries.devices_by_version()[:12],
        "ingest": summaries.recent_ingest(),
        "ingest_window_s": int(summaries.INGEST_WINDOW.total_seconds()),
        "workers": summaries.worker_figures(),
        "recent_audit": AuditLog.objects.all()[:12],
        "active_rollouts": active_rollouts(),
    })
