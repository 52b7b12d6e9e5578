"""Output: rich tables and bars for people, one JSON document for machines (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def emit_json(data: Any, stream: Any = None) -> None:
    """Print ``data`` as one JSON document on stdout (or ``stream``)."""
    (stream or sys.stdout).write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table of ``rows`` (cells rendered with ``str``; None as a dash)."""
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column, justify="right" if column.startswith("#") else "left")
    for row in rows:
        t.add_row(*("—" if cell is None else str(cell) for cell in row))
    out.print(t)


def human_bytes(n: int | None) -> str:
    """Return ``n`` bytes as B/KiB/MiB."""
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
