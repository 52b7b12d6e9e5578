"""Writes on users: every one audited."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.db import transaction
from django.db.models import Q

from fleet.audit.actions import record_audit
from fleet.core.errors import Refused
from fleet.core.roles import ROLE_GROUP_NAMES, Role, ensure_role_groups


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


class AccountRefused(Refused):
    """A write on users refused."""


def _other_active_admins(user: AbstractUser) -> int:
    groups = ensure_role_groups()
    return (get_user_model().objects.filter(is_active=True)
            .filter(Q(groups=groups[Role.ADMIN]) | Q(is_superuser=True))
            .exclude(pk=user.pk).distinct().count())


@transaction.atomic
def do_set_user_role(user: AbstractUser, role: Role, *,
                     actor: AbstractUser | None) -> AbstractUser:
    """Give ``user`` exactly one role; the last active admin cannot lose the admin role."""
    groups = ensure_role_groups()
    before = [g.name for g in user.groups.all()]
    if ROLE_GROUP_NAMES[Role.ADMIN] in before and role != Role.ADMIN \
            and _other_active_admins(user) == 0:
        raise AccountRefused("last_admin", f"{user.get_username()} is the last admin.", 409)
    user.groups.remove(*groups.values())
    user.groups.add(groups[role])
    user.is_staff = role == Role.ADMIN
    user.save(update_fields=["is_staff"])
    record_audit(actor=actor, action="user.change_role", obj=user, before={"role": before},
                 after={"role": [ROLE_GROUP_NAMES[role]]})
    return user


@transaction.atomic
def do_set_user_active(user: AbstractUser, active: bool, *,
                       actor: AbstractUser | None) -> AbstractUser:
    """Deactivate a user (no login, API tokens refused) or activate them again.

    Nobody deactivates themself, and the last active admin stays.
    """
    if not active and actor is not None and actor.pk == user.pk:
        raise AccountRefused("self_deactivate", "You cannot deactivate your own account.", 409)
    is_admin = user.is_superuser or user.groups.filter(
        name=ROLE_GROUP_NAMES[Role.ADMIN]).exists()
    if not active and is_admin and _other_active_admins(user) == 0:
        raise AccountRefused("last_admin", f"{user.get_username()} is the last admin.", 409)
    if user.is_active == active:
        return user
    user.is_active = active
    user.save(update_fields=["is_active"])
    record_audit(actor=actor, action="user.activate" if active else "user.deactivate",
                 obj=user, before={"is_active": not active}, after={"is_active": active})
    return user
