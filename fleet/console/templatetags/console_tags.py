"""Template helpers of the console: status badges, sizes, relative times, icons."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# Status value -> badge tone. Tones are colours in console.css: ok green, warn amber,
# bad red, info blue, muted grey.
TONES = {
    "online": "ok", "active": "ok", "ready": "ok", "done": "ok", "fits": "ok",
    "offline": "muted", "expired": "muted", "used_up": "muted", "retired": "muted",
    "enrolled": "warn", "queued": "info", "running": "info", "converting": "info",
    "validating": "info",
    "revoked": "bad", "invalid": "bad", "failed": "bad",
}


@register.filter
def tone(value: Any) -> str:
    """Return the badge tone of a status value."""
    return TONES.get(str(value), "muted")


# Short words for badges where the stored value or its display label reads badly in a table.
SHORT_LABELS = {"enrolled": "never seen", "used_up": "used up", "ready": "validated",
                "invalid": "refused"}


@register.simple_tag
def badge(value: Any, label: Any = None) -> SafeString:
    """Render a coloured status badge (the label defaults to a short word for the value)."""
    text = label if label not in (None, "") else SHORT_LABELS.get(
        str(value), str(value).replace("_", " "))
    return format_html('<span class="badge badge-{}">{}</span>', tone(value), text)


@register.filter
def nbytes(value: Any) -> str:
    """Format a byte count: exact below 10 KiB, else KiB/MiB with one decimal."""
    if value is None or value == "":
        return "—"
    n = int(value)
    if n < 10 * 1024:
        return f"{n:,} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


@register.filter
def num(value: Any, digits: int = 0) -> str:
    """Format a number with thousands separators (— for None)."""
    if value is None or value == "":
        return "—"
    return f"{float(value):,.{int(digits)}f}" if digits else f"{round(float(value)):,}"


@register.filter
def pct(value: Any, digits: int = 0) -> str:
    """Format a 0..1 share as a percentage."""
    if value is None:
        return "—"
    return f"{float(value) * 100:.{int(digits)}f}%"


def _span(seconds: float) -> str:
    """Say a duration in the largest unit that fits: "4 min", "3 h", "2 days"."""
    # Round to the nearest unit: a token made "for 7 days" should read "in 7 days", not 6.
    for size, unit in ((86400 * 365, "year"), (86400, "day")):
        if seconds >= size:
            n = round(seconds / size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    if seconds >= 3600:
        return f"{round(seconds / 3600)} h"
    return f"{max(round(seconds / 60), 1)} min"


@register.filter
def ago(value: datetime | None) -> SafeString:
    """Render a time as "5 min ago" / "in 3 days", with the exact UTC time as a tooltip."""
    if value is None:
        return mark_safe('<span class="dim">never</span>')
    exact = timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")
    delta = (timezone.now() - value).total_seconds()
    if -60 < delta < 60:
        text = "just now"
    elif delta > 0:
        text = f"{_span(delta)} ago"
    else:
        text = f"in {_span(-delta)}"
    return format_html('<time class="nowrap" datetime="{}" title="{}">{}</time>',
                       value.isoformat(), exact, text)


@register.filter
def pretty_json(value: Any) -> str:
    """Return indented JSON for display."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@register.filter
def short(value: Any, length: int = 12) -> str:
    """Shorten a digest for display (full value belongs in a title attribute)."""
    text = str(value or "")
    return text if len(text) <= int(length) else f"{text[: int(length)]}…"


@register.filter
def get(mapping: Any, key: Any) -> Any:
    """Look a key up in a dict (templates cannot index with a variable)."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


_ICONS = {
    "overview": '<path d="M3 13h8V3H3zM13 21h8V11h-8zM3 21h8v-6H3zM13 3v6h8V3z"/>',
    "devices": '<rect x="6" y="6" width="12" height="12" rx="2"/><path d="M9 2v4M15 2v4M9 18v4'
               'M15 18v4M2 9h4M2 15h4M18 9h4M18 15h4"/>',
    "enrollment": '<path d="M15 7a4 4 0 1 1-8 0 4 4 0 0 1 8 0zM3 21v-1a6 6 0 0 1 9-5.2'
                  'M19 14v6M16 17h6"/>',
    "models": '<path d="M12 2 3 7l9 5 9-5-9-5zM3 12l9 5 9-5M3 17l9 5 9-5"/>',
    "rollouts": '<path d="M4 20h16M6 16l4-5 3 3 5-7M14 7h4v4"/>',
    "telemetry": '<path d="M3 12h4l3 8 4-16 3 8h4"/>',
    "audit": '<path d="M9 3h6l1 2h3v16H5V5h3zM9 11h6M9 15h6"/>',
    "admin": '<circle cx="12" cy="12" r="3"/><path d="M12 2v3M12 19v3M2 12h3M19 12h3'
             'M4.9 4.9l2.1 2.1M17 17l2.1 2.1M4.9 19.1 7 17M17 7l2.1-2.1"/>',
    "logout": '<path d="M15 4h4v16h-4M10 17l5-5-5-5M15 12H3"/>',
    "menu": '<path d="M3 6h18M3 12h18M3 18h18"/>',
    "copy": '<rect x="9" y="9" width="12" height="12" rx="2"/><path d="M5 15V5a2 2 0 0 1 2-2h8"/>',
    "download": '<path d="M12 3v12M7 10l5 5 5-5M4 21h16"/>',
    "gateways": '<rect x="3" y="14" width="18" height="6" rx="1"/><path d="M7 14V9M12 14V4M17 14V9'
                'M7 17h.01M11 17h2"/>',
    "deadletters": '<path d="M3 6h18v12H3zM3 6l9 7 9-7M15 15l4 4M19 15l-4 4"/>',
    "profiles": '<rect x="5" y="5" width="14" height="14" rx="1"/><path d="M9 9h6v6H9zM9 2v3'
                'M15 2v3M9 19v3M15 19v3M2 9h3M2 15h3M19 9h3M19 15h3"/>',
    "keys": '<circle cx="8" cy="15" r="4"/><path d="M11 12l9-9M17 6l3 3M14 9l2 2"/>',
    "users": '<circle cx="9" cy="8" r="4"/><path d="M2 21v-1a7 7 0 0 1 14 0v1M16 4a4 4 0 0 1 0 8'
             'M22 21v-1a7 7 0 0 0-4-6.3"/>',
}


@register.simple_tag
def icon(name: str) -> SafeString:
    """Render one of the console's inline SVG icons (stroke follows the text colour)."""
    return mark_safe(
        '<svg class="icon" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
        'stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">'
        f"{_ICONS[name]}</svg>"
    )


@register.filter
def confidence(score: Any) -> str:
    """Format a mean top-1 score (0..255 on the wire) as a confidence percentage."""
    if score is None:
        return "—"
    return f"{float(score) / 255 * 100:.1f}%"


@register.filter
def latency(ms: Any) -> str:
    """Format a latency given in milliseconds in the unit that reads well: µs below 1 ms."""
    if ms is None:
        return "—"
    value = float(ms)
    if value < 1:
        return f"{value * 1000:.0f} µs"
    return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"


@register.filter
def signed(value: Any, digits: int = 2) -> str:
    """Format a difference with its sign (+0.12, −0.30; 0.00 when it rounds to nothing)."""
    if value is None:
        return "—"
    text = f"{abs(float(value)):,.{int(digits)}f}"
    if float(text.replace(",", "")) == 0:
        return text
    return f"{'+' if float(value) > 0 else '−'}{text}"


@register.filter
def score_points(value: Any) -> Any:
    """Convert a score difference (0..255 scale) to confidence percentage points."""
    return None if value is None else float(value) / 255 * 100
