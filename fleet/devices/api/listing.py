"""The device list's rows, built from plain column values instead of model instances.

A page of ``DeviceSerializer`` output cost ~10 ms of CPU at 50 devices: a ``Device``, a
``HardwareProfile`` (its ``supported_ops`` JSON decoded on every row) and a ``DeviceGroup``
instance per row, Tag instances through the prefetch, then DRF's per-field attribute walk.
Here the page is one ``values_list`` query (profile and group names by join) and one query for
the tag names of the page's devices, and each row is a dict built in one pass. The output is
exactly the serializer's (same keys, order and formats): tests/fleet/devices/
test_device_list_at_scale.py compares the two on the same devices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers

from fleet.devices.models import Device

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
        """Return how many devices the filters select."""
        return self.queryset.count()

    def __getitem__(self, window: slice) -> list[tuple[Any, ...]]:
        return list(page_columns(self.queryset)[window])


def tag_names(device_ids: Iterable[int]) -> dict[int, list[str]]:
    """Tag names of each device, sorted by name as ``Tag.Meta.ordering`` sorts them."""
    names: dict[int, list[str]] = {}
    through = Device.tags.through.objects.filter(device_id__in=list(device_ids))
    for device_id, name in through.order_by("tag__name").values_list("device_id", "tag__name"):
        names.setdefault(device_id, []).append(name)
    return names


def rows(page: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Serialize a page of :func:`page_columns` tuples as ``DeviceSerializer`` would."""
    # The serializer's own date-time field: same time zone and ISO 8601 text ('Z' for UTC).
    when = serializers.DateTimeField().to_representation
    tags = tag_names(r[0] for r in page)
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
