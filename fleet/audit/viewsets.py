"""The audited CRUD viewset: plain writes through the API are atomic and leave an audit entry."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import ProtectedError
from rest_framework import status, viewsets

from fleet.audit.actions import record_audit
from fleet.core.api import ApiError, client_address
from fleet.core.roles import Role


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
