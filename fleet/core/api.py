"""API base classes shared by every app's views, and the error shape.

Errors always look like ``{"reason": "<code>", "detail": "<human text>"}`` (plus ``fields`` for
validation errors), so devices and scripts can branch on ``reason``.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import ProtectedError
from rest_framework import exceptions, status, viewsets
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from fleet.accounts.roles import Role
from fleet.audit.actions import record_audit


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


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every API error as ``{"reason", "detail"[, "fields"]}``."""
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
    """Return the caller's address as the web server saw it."""
    return request.META.get("REMOTE_ADDR")


class AuditedModelViewSet(viewsets.ModelViewSet):
    """CRUD viewset whose plain writes are atomic and audited as ``<noun>.create|update|delete``.

    Subclasses name ``audit_noun``; anything more than a field edit belongs in an action function
    that the subclass calls instead.
    """

    audit_noun = "object"
    read_role = Role.VIEWER
    write_role = Role.ADMIN

    def _snapshot(self, instance: Any) -> dict[str, Any]:
        return dict(self.get_serializer(instance).data)

    @transaction.atomic
    def perform_create(self, serializer: Any) -> None:
        instance = serializer.save()
        record_audit(
            actor=self.request.user, action=f"{self.audit_noun}.create", obj=instance,
            after=self._snapshot(instance), remote_addr=client_address(self.request),
        )

    @transaction.atomic
    def perform_update(self, serializer: Any) -> None:
        before = self._snapshot(serializer.instance)
        instance = serializer.save()
        record_audit(
            actor=self.request.user, action=f"{self.audit_noun}.update", obj=instance,
            before=before, after=self._snapshot(instance),
            remote_addr=client_address(self.request),
        )

    @transaction.atomic
    def perform_destroy(self, instance: Any) -> None:
        record_audit(
            actor=self.request.user, action=f"{self.audit_noun}.delete", obj=instance,
            before=self._snapshot(instance), remote_addr=client_address(self.request),
        )
        try:
            with transaction.atomic():
                instance.delete()
        except ProtectedError as exc:
            users = sorted({str(o) for o in exc.protected_objects})[:5]
            raise ApiError("in_use", f"{instance} is still used by: {', '.join(users)}",
                           status.HTTP_409_CONFLICT) from None
