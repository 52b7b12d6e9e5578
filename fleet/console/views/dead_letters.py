"""Dead letters: device messages refused at ingest, filtered by reason and device."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from fleet.console.access import console_view, render_page
from fleet.console.paging import keyset_page
from fleet.telemetry.models import DeadLetter

PAGE_SIZE = 50


@console_view()
def dead_letters(request: HttpRequest) -> HttpResponse:
    """List refused messages, newest first, with counts per reason for the filter."""
    reason = request.GET.get("reason", "").strip()
    device = request.GET.get("device", "").strip()
    letters = DeadLetter.objects.all()
    if reason:
        letters = letters.filter(reason=reason)
    if device:
        letters = letters.filter(device_uid=device)
    page = keyset_page(letters, key="id", after=request.GET.get("after"),
                       before=request.GET.get("before"), size=PAGE_SIZE, descending=True,
                       cast=int)
    for letter in page.items:
        letter.payload_hex = bytes(letter.payload)[:64].hex(" ")
    reasons = (DeadLetter.objects.order_by("reason").values_list("reason", flat=True)
               .distinct())
    return render_page(request, "console/dead_letters.html", {
        "nav": "dead-letters", "page": page, "params": request.GET,
        "reasons": list(reasons), "reason": reason, "device": device,
        "filtered": bool(reason or device),
    })
