"""The audit log: every state change, filterable, newest first."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from fleet.audit.filtersets import AuditLogFilterSet
from fleet.audit.models import AuditLog
from fleet.console.access import console_view, render_page
from fleet.console.paging import keyset_page


@console_view()
def audit(request: HttpRequest) -> HttpResponse:
    """List audit entries matching the filters, keyset-paged on the primary key."""
    filters = AuditLogFilterSet(request.GET, queryset=AuditLog.objects.all())
    entries = filters.qs if filters.is_valid() else AuditLog.objects.none()
    page = keyset_page(entries, key="id", after=request.GET.get("after"),
                       before=request.GET.get("before"), size=50, descending=True, cast=int)
    return render_page(request, "console/audit.html", {
        "nav": "audit",
        "page": page,
        "filters": filters,
        "params": request.GET,
        "object_types": (AuditLog.objects.order_by("object_type")
                         .values_list("object_type", flat=True).distinct()),
    })
