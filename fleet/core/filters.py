"""Filters shared by the apps' filtersets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import django_filters
from rest_framework.exceptions import ValidationError


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 date-time filter whose value reaches the database in UTC.

    Django passes an aware value with its own offset: PostgreSQL refuses offsets past ±15:59
    (``+19:24`` was a 500), and near year 1 or 9999 the conversion overflows (a 500 on every
    backend). Such a value is converted here, or refused as invalid input (400)."""

    def filter(self, qs: Any, value: datetime | None) -> Any:
        if value is not None and value.tzinfo is not None:
            try:
                value = value.astimezone(UTC)
            except OverflowError:
                raise ValidationError({self.field_name: ["Date-time out of range."]}) from None
        return super().filter(qs, value)
