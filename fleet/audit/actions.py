"""Record audit entries; called from every action that changes state."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import models

from fleet.audit.models import AuditLog
from fleet.core.rows import insert_row


def record_audit(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    obj: models.Model,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    actor_label: str | None = None,
    remote_addr: str | None = None,
) -> AuditLog:
    """Write one audit entry inside the caller's transaction.

    ``actor`` is the user who acted; for a device or the controller pass ``actor=None`` and an
    ``actor_label`` such as ``device:<uid>`` or ``system``.
    """
    if actor is not None and getattr(actor, "is_authenticated", False):
        label = actor_label or actor.get_username()
        user = actor
    else:
        label = actor_label or "system"
        user = None
    # insert_row: every action writes one, and the ORM's create compiled it each time.
    return insert_row(AuditLog(
        actor=user,
        actor_label=label[:150],
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        before=before,
        after=after,
        remote_addr=remote_addr,
    ))
