"""Writes on users: every one audited."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.db import transaction

from fleet.core.roles import ROLE_GROUP_NAMES, Role, ensure_role_groups
from fleet.audit.actions import record_audit


@transaction.atomic
def do_create_user(
    username: str, password: str, role: Role, *, actor: AbstractUser | None, email: str = ""
) -> AbstractUser:
    """Create (or update the password and role of) a user and put them in one role group."""
    groups = ensure_role_groups()
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username=username, defaults={"email": email})
    before = None if created else {"role": [g.name for g in user.groups.all()]}
    user.set_password(password)
    user.is_staff = role == Role.ADMIN  # admins may use Django's admin for raw data
    user.save()
    user.groups.remove(*groups.values())
    user.groups.add(groups[role])
    record_audit(
        actor=actor,
        action="user.create" if created else "user.update",
        obj=user,
        before=before,
        after={"username": username, "role": ROLE_GROUP_NAMES[role]},
    )
    return user
