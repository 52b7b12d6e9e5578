"""The one shape every refused action takes: a stable reason code, text, an HTTP status."""

from __future__ import annotations


class Refused(Exception):
    """An action refused a request; ``reason`` is a stable machine code, ``status`` the HTTP
    status an API answers with, ``extra`` anything a caller may show (per-profile reasons)."""

    def __init__(self, reason: str, detail: str, status: int = 400, **extra: object) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.extra = extra
