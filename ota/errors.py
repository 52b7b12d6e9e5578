"""The error every ota action raises to refuse a request, with a stable reason code."""

from __future__ import annotations


class OtaError(Exception):
    """A refused registry, packaging or rollout request.

    ``reason`` is a stable machine code; ``status`` the HTTP status an API answers with.
    """

    def __init__(self, reason: str, detail: str, status: int = 400, **extra: object) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.extra = extra
