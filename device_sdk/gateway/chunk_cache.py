"""Bytes of the packages the gateway's children are downloading, as they pass by.

The server's package carousel publishes each package's chunks on ``fleet/v1/pkg/{pkg}/chunk``
in pieces far larger than an MCU's link frame; unicast answers arrive on the children's
``ota/chunk``. Keeping both lets the gateway answer an MCU's chunk requests locally, clipped
to its link MTU, so one download over the broker serves every child of the gateway. Nothing
here is trusted: the MCU checks every byte against its signed manifest's digests.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["ChunkCache"]


@dataclass
class _Package:
    starts: list[int] = field(default_factory=list)  # sorted segment offsets
    segments: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    longest: int = 0


class ChunkCache:
    """Byte ranges per package, least recently used package dropped past ``max_bytes``.

    Thread-safe: the MQTT thread stores, the serial threads read.
    """

    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._packages: OrderedDict[int, _Package] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, pkg: int, offset: int, data: bytes) -> None:
        """Keep ``data`` found at ``offset`` of package ``pkg``'s transfer stream."""
        if not data or len(data) > self.max_bytes:
            return
        with self._lock:
            package = self._packages.setdefault(pkg, _Package())
            self._packages.move_to_end(pkg)
            old = package.segments.get(offset)
            if old is not None and len(old) >= len(data):
                return  # the carousel repeats itself: keep the longer copy
            if old is None:
                bisect.insort(package.starts, offset)
            package.size += len(data) - (len(old) if old else 0)
            package.segments[offset] = bytes(data)
            package.longest = max(package.longest, len(data))
            self._evict()

    def get(self, pkg: int, offset: int, length: int) -> bytes | None:
        """Return up to ``length`` bytes starting exactly at ``offset``, or None if not held."""
        with self._lock:
            package = self._packages.get(pkg)
            if package is None or length <= 0:
                return None
            self._packages.move_to_end(pkg)
            # Of the segments starting at or before offset, the one reaching furthest past it;
            # none starting more than the longest segment earlier can reach it.
            best = b""
            for i in range(bisect.bisect_right(package.starts, offset) - 1, -1, -1):
                start = package.starts[i]
                if offset - start >= package.longest:
                    break
                piece = package.segments[start][offset - start:offset - start + length]
                if len(piece) > len(best):
                    best = piece
            return best or None

    def drop(self, pkg: int) -> None:
        """Forget a package (no child downloads it any more)."""
        with self._lock:
            self._packages.pop(pkg, None)

    @property
    def size(self) -> int:
        """Return the bytes held."""
        with self._lock:
            return sum(p.size for p in self._packages.values())

    def _evict(self) -> None:
        total = sum(p.size for p in self._packages.values())
        while total > self.max_bytes and len(self._packages) > 1:
            _, gone = self._packages.popitem(last=False)
            total -= gone.size
