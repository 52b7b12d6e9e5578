"""Keyset paging for lists that grow to 100k rows: no OFFSET scans and no full COUNT.

A page is fetched as ``WHERE key > cursor ORDER BY key LIMIT n + 1`` on a unique, indexed key,
so page 2,000 costs what page 1 costs. The total is counted only up to a cap
(``SELECT COUNT(*) FROM (... LIMIT cap + 1)``) and shown as "10,000+" beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

COUNT_CAP = 10_000


@dataclass(frozen=True)
class KeysetPage:
    """One page of rows with the cursors of its neighbours (None: no such page)."""

    items: list[Any]
    next_cursor: str | None
    prev_cursor: str | None
    total: int
    total_capped: bool

    @property
    def total_label(self) -> str:
        """Return the row count for display ("10,000+" past the cap)."""
        return f"{self.total:,}+" if self.total_capped else f"{self.total:,}"


def keyset_page(
    qs: QuerySet[Any], *, key: str, after: str | None, before: str | None, size: int = 50,
    descending: bool = False, cast: type = str,
) -> KeysetPage:
    """Return the page after ``after`` (or before ``before``) of ``qs`` ordered by ``key``.

    ``key`` must be unique and indexed (``uid``, ``id``); ``cast`` converts cursors from the
    query string (a bad cursor starts from the first page rather than failing).
    """
    forward_op, backward_op = ("lt", "gt") if descending else ("gt", "lt")
    order = f"-{key}" if descending else key
    reverse_order = key if descending else f"-{key}"
    after_v, before_v = _cast(after, cast), _cast(before, cast)
    if before_v is not None:
        rows = list(qs.filter(**{f"{key}__{backward_op}": before_v}).order_by(reverse_order)
                    [: size + 1])
        has_prev = len(rows) > size
        items = list(reversed(rows[:size]))
        has_next = True
    else:
        page_qs = qs.order_by(order)
        if after_v is not None:
            page_qs = page_qs.filter(**{f"{key}__{forward_op}": after_v})
        rows = list(page_qs[: size + 1])
        items = rows[:size]
        has_next = len(rows) > size
        has_prev = after_v is not None
    total = qs.order_by()[: COUNT_CAP + 1].count()
    return KeysetPage(
        items=items,
        next_cursor=str(getattr(items[-1], key)) if items and has_next else None,
        prev_cursor=str(getattr(items[0], key)) if items and has_prev else None,
        total=min(total, COUNT_CAP),
        total_capped=total > COUNT_CAP,
    )


def _cast(value: str | None, cast: type) -> Any:
    if value in (None, ""):
        return None
    try:
        return cast(value)
    except (TypeError, ValueError):
        return None
