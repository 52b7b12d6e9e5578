"""API base classes shared by every app's views, and the error shape.

Errors always look like ``{"reason": "<code>", "detail": "<human text>"}`` (plus ``fields`` for
validation errors), so devices and scripts can branch on ``reason``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from rest_framework import exceptions, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.settings import api_settings

from fleet.core.errors import Refused


class ApiError(exceptions.APIException):
    """An API error with a machine-readable ``reason`` code."""

    def __init__(self, reason: str, detail: str, status_code: int = status.HTTP_400_BAD_REQUEST):
        super().__init__(detail=detail)
        self.reason = reason
        self.status_code = status_code


_DEFAULT_REASONS = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "throttled",
}


class QueryFormatNegotiation(DefaultContentNegotiation):
    """DRF's content negotiation, with an unknown ``?format=`` answered as the bad query value
    it is (400 ``unknown_format``, documented) instead of DRF's 404."""

    def select_renderer(self, request: Any, renderers: list[Any],
                        format_suffix: str | None = None) -> Any:
        param = api_settings.URL_FORMAT_OVERRIDE
        asked = request.query_params.get(param) if param and not format_suffix else None
        if asked and not any(renderer.format == asked for renderer in renderers):
            known = ", ".join(sorted({r.format for r in renderers}))
            raise ApiError("unknown_format", f"?{param}= takes one of: {known}.")
        return super().select_renderer(request, renderers, format_suffix)


def refused_response(exc: Refused) -> Response:
    """Render an action's refusal: its reason, detail and status, plus everything in ``extra``
    (such as per-profile admission reasons) for API clients to show."""
    return Response({**exc.extra, "reason": exc.reason, "detail": exc.detail}, status=exc.status)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every API error as ``{"reason", "detail"[, "fields"]}``; a ``Refused`` from an
    action also carries its ``extra`` fields, so views never translate refusals by hand."""
    # rest_framework.views is imported here, not at the top: its APIView reads
    # DEFAULT_CONTENT_NEGOTIATION_CLASS (this module's QueryFormatNegotiation) when it is
    # defined, so importing it first made this module unimportable on its own.
    from rest_framework.views import exception_handler as drf_exception_handler
    from rest_framework.views import set_rollback

    if isinstance(exc, Refused):
        set_rollback()  # as DRF does for its own errors: nothing of a refused request stays
        return refused_response(exc)
    if isinstance(exc, RequestDataTooBig):  # Django's body limit, met while DRF parses
        return Response({"reason": "payload_too_large", "detail": str(exc)},
                        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, TooManyFieldsSent):
        return Response({"reason": "invalid", "detail": str(exc)},
                        status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    reason = getattr(exc, "reason", None) or _DEFAULT_REASONS.get(response.status_code, "error")
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"reason": reason, "detail": "Invalid input.", "fields": response.data}
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else ""
        response.data = {"reason": reason, "detail": str(detail)}
    return response


def client_address(request: Any) -> str | None:
    """Return the caller's address: ``REMOTE_ADDR``, or behind ``TRUSTED_PROXY_COUNT`` proxies
    the address the outermost trusted one saw (:func:`fleet.core.throttling.client_ip`)."""
    from fleet.core.throttling import client_ip

    return client_ip(request) or None


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """Django's 404 for paths no route matches: under ``/api/`` the API's error shape (an id
    that cannot be in a URL, such as one with a slash, answers as an unknown id does); HTML
    elsewhere."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse({"reason": "not_found", "detail": "Not found."}, status=404)
    return page_not_found(request, exception)
