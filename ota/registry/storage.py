"""Content-addressed artifact storage behind a small interface (S3-compatible can be added).

An artifact's key is the SHA-256 of its bytes, so a stored artifact is immutable and storing
the same bytes twice stores them once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from django.conf import settings


class ArtifactStorage(Protocol):
    """Where model files and package transfers live."""

    def put(self, data: bytes) -> str:
        """Store bytes; return their key (SHA-256 hex)."""

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``; raise KeyError when absent."""

    def exists(self, key: str) -> bool:
        """Tell whether ``key`` is stored."""

    def path(self, key: str) -> Path:
        """Return a local file path for ``key`` (for tools that want a file)."""


class FileSystemStorage:
    """Artifacts as files ``<root>/<aa>/<sha256>``, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise KeyError(key)
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        target = self.path(key)
        if target.exists():
            return key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        try:
            return self.path(key).exists()
        except KeyError:
            return False


def artifact_storage() -> ArtifactStorage:
    """Return the storage the settings name (the filesystem under ARTIFACT_ROOT today)."""
    return FileSystemStorage(Path(settings.ARTIFACT_ROOT))
