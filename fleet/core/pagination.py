"""The API's pagination: ``?limit=`` and ``?offset=`` bounded, so no value reaches the database
out of range (a 30-digit offset overflowed SQLite's 64-bit integers: a 500); the count taken
from the page itself when the page reaches the end of the list."""

from __future__ import annotations

from typing import Any

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

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any] | None:
        """Return the page, and set ``count`` as DRF does, but read the page first: a page
        that ends short of the limit is the end of the list, so the count is its offset plus
        its length, and the count query (for a search, a second trigram scan) is skipped."""
        self.request = request
        self.limit = self.get_limit(request)
        if self.limit is None:
            return None
        self.offset = self.get_offset(request)
        page = list(queryset[self.offset:self.offset + self.limit])
        if len(page) < self.limit and (page or self.offset == 0):
            self.count = self.offset + len(page)
        else:  # a full page, or past the end: only a count tells how many there are
            self.count = self.get_count(queryset)
        if self.count > self.limit and self.template is not None:
            self.display_page_controls = True
        return page
