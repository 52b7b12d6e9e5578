"""The device list's rows, built from plain column values instead of model instances.

A page of ``DeviceSerializer`` output cost ~10 ms of CPU at 50 devices: a ``Device``, a
``HardwareProfile`` (its ``supported_ops`` JSON decoded on every row) and a ``DeviceGroup``
instance per row, Tag instances through the prefetch, then DRF's per-field attribute walk.
Here the page is one ``values_list`` query (profile and group names by join) and one query for
the tag names of the page's devices, and each row is a dict built in one pass. The output is
exactly the serializer's (same keys, order and formats): tests/fleet/devices/
test_device_list.py compares the two on the same devices.

The count stays exact and gets cheap: over the filtered queryset without the page's joins;
all devices from the tally that migration devices 0013's triggers keep (PostgreSQL); one tag
from its memberships; and none at all when the page ends short of the limit
(fleet/core/pagination.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet
from django.db.models.expressions import Col
from django.db.models.lookups import Exact
from django.db.models.sql import Query
from django.db.models.sql.where import AND
from django.utils import timezone
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from fleet.devices.models import Device, Tag

# Keys of one list row, in the serializer's order (DeviceSerializer.Meta.fields).
ROW_KEYS = (
    "uid", "name", "hardware_profile", "group", "tags", "state", "created_at", "first_seen",
    "last_seen", "firmware_version", "tflm_version", "capabilities", "capability_issues",
    "public_key_fingerprint", "key_algorithm", "revoked", "revoked_at",
)
# The columns a row is made of, in the order row() unpacks them.
COLUMNS = (
    "id", "uid", "name", "hardware_profile__name", "group__name", "state", "created_at",
    "first_seen", "last_seen", "firmware_version", "tflm_version", "capabilities",
    "capability_issues", "public_key_fingerprint", "key_algorithm", "revoked_at",
)


def page_columns(queryset: QuerySet[Device]) -> QuerySet[Any]:
    """The filtered, ordered device queryset narrowed to the list's columns (tuples)."""
    return queryset.values_list(*COLUMNS)


class ColumnPages:
    """A filtered device queryset as the paginator takes it: ``count()`` on the queryset as
    the filters left it (a count over the column query would keep its profile and group joins:
    a seq scan and hash join of every device), a slice as column tuples."""

    def __init__(self, queryset: QuerySet[Device]) -> None:
        self.queryset = queryset

    def count(self) -> int:
        """Return how many devices the filters select: all of them from the trigger-kept
        tally; those of one tag from its memberships alone; else by the filtered queryset."""
        query = self.queryset.query
        if connection.vendor == "postgresql" and not query.where and len(query.alias_map) <= 1:
            return device_total()
        tag = only_tag(query)
        if tag is not None:
            # A device holds a tag once (the unique device-tag pair) and every membership
            # has its device (foreign key): the same number, without visiting 1 device
            # index entry per member (3,333 lookups for a tag of 100,000 devices).
            return Device.tags.through.objects.filter(tag__name=tag).count()
        return self.queryset.count()

    def __getitem__(self, window: slice) -> list[tuple[Any, ...]]:
        return list(page_columns(self.queryset)[window])


def only_tag(query: Query) -> str | None:
    """The tag name when the list's one filter is ``?tag=``, else None."""
    where = query.where
    if where.connector != AND or where.negated or len(where.children) != 1:
        return None
    lookup = where.children[0]
    if (isinstance(lookup, Exact) and isinstance(lookup.lhs, Col)
            and lookup.lhs.target == Tag._meta.get_field("name") and isinstance(lookup.rhs, str)):
        return lookup.rhs
    return None


def device_total() -> int:
    """Return the number of devices, exact, from the tally the triggers of migration devices
    0013 keep (PostgreSQL only): a sum over at most 64 rows instead of a count of every
    device."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(devices), 0) FROM devices_device_tally")
        return int(cursor.fetchone()[0])


def tag_names(device_ids: Sequence[int]) -> dict[int, list[str]]:
    """Tag names of each device, sorted by name as ``Tag.Meta.ordering`` sorts them. One
    plain statement: the ORM spent more CPU building this join than the database running it."""
    if not device_ids:
        return {}
    quote = connection.ops.quote_name
    sql = (f"SELECT dt.device_id, t.name FROM {quote(Device.tags.through._meta.db_table)} dt"
           f" JOIN {quote(Tag._meta.db_table)} t ON t.id = dt.tag_id"
           f" WHERE dt.device_id IN ({', '.join(['%s'] * len(device_ids))}) ORDER BY t.name")
    names: dict[int, list[str]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, list(device_ids))
        for device_id, name in cursor.fetchall():
            names.setdefault(device_id, []).append(name)
    return names


def datetime_text() -> Callable[[datetime | None], str | None]:
    """DRF's ``DateTimeField().to_representation`` with the time zone looked up once per page
    instead of once per value (that lookup was a tenth of a page's CPU): ISO 8601 in the
    current time zone, 'Z' for UTC. Another ``DATETIME_FORMAT`` gets DRF's field itself."""
    fmt = api_settings.DATETIME_FORMAT
    if not settings.USE_TZ or not isinstance(fmt, str) or fmt.lower() != ISO_8601:
        return serializers.DateTimeField().to_representation
    zone = timezone.get_current_timezone()

    def text(value: datetime | None) -> str | None:
        if not value:
            return None
        iso = value.astimezone(zone).isoformat()
        return iso[:-6] + "Z" if iso.endswith("+00:00") else iso

    return text


def rows(page: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Serialize a page of :func:`page_columns` tuples as ``DeviceSerializer`` would."""
    when = datetime_text()
    tags = tag_names([r[0] for r in page])
    out = []
    for (pk, uid, name, profile, group, state, created_at, first_seen, last_seen, firmware,
         tflm, capabilities, issues, fingerprint, algorithm, revoked_at) in page:
        out.append({
            "uid": uid, "name": name, "hardware_profile": profile, "group": group,
            "tags": tags.get(pk, []), "state": state, "created_at": when(created_at),
            "first_seen": when(first_seen), "last_seen": when(last_seen),
            "firmware_version": firmware, "tflm_version": tflm, "capabilities": capabilities,
            "capability_issues": issues, "public_key_fingerprint": fingerprint,
            "key_algorithm": algorithm, "revoked": revoked_at is not None,
            "revoked_at": when(revoked_at),
        })
    return out
