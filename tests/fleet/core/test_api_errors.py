"""The API's one exception handler renders every refusal the same way, extra fields included."""

from __future__ import annotations

from fleet.core.api import ApiError, exception_handler
from fleet.core.errors import Refused
from ota.errors import OtaError


def test_refused_renders_reason_detail_status_and_extra() -> None:
    """A domain refusal reaches the client with its status, reason, detail and extra fields."""
    exc = OtaError("incompatible", "Refused for nano", 409, refusals={"nano": "arena too small"})
    response = exception_handler(exc, {})
    assert response is not None
    assert response.status_code == 409
    assert response.data == {"reason": "incompatible", "detail": "Refused for nano",
                             "refusals": {"nano": "arena too small"}}


def test_api_error_keeps_the_shape() -> None:
    """Errors raised by views directly keep ``{"reason", "detail"}``."""
    response = exception_handler(ApiError("bad", "no", 400), {})
    assert response is not None
    assert response.data == {"reason": "bad", "detail": "no"}
