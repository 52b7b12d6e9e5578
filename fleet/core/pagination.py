"""The API's pagination: ``?limit=`` and ``?offset=`` bounded, so no value reaches the database
out of range (a 30-digit offset overflowed SQLite's 64-bit integers: a 500)."""

from __future__ import annotations

from django.conf import settings
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """Limit/offset paging with the limit capped at ``API_MAX_PAGE_SIZE`` and the offset at
    ``API_MAX_OFFSET``; a value that is not a non-negative number falls back to the default
    (limit: the page size; offset: 0), as DRF does."""

    @property
    def max_limit(self) -> int:  # type: ignore[override]
        return settings.API_MAX_PAGE_SIZE

    def get_offset(self, request: Request) -> int:
        """Return the offset, clamped to ``API_MAX_OFFSET``."""
        raw = request.query_params.get(self.offset_query_param, "")
        try:
            offset = int(raw)
        except ValueError:  # not a number, or longer than Python converts
            return 0
        return min(max(offset, 0), settings.API_MAX_OFFSET)
