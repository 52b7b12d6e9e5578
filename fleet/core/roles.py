"""Roles are Django groups; each role includes the rights of the roles below it."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.db.models import IntegerChoices


class Role(IntegerChoices):
    """Ordered roles: a higher value may do everything a lower one may."""

    VIEWER = 1, "viewer"
    OPERATOR = 2, "operator"
    ADMIN = 3, "admin"


ROLE_GROUP_NAMES = {Role.VIEWER: "viewer", Role.OPERATOR: "operator", Role.ADMIN: "admin"}


def role_of(user: AbstractBaseUser | AnonymousUser | None) -> Role | None:
    """Return the highest role a user holds, or None for anonymous and role-less users."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return Role.ADMIN
    cached = getattr(user, "_fleet_role", False)
    if cached is not False:
        return cached
    names = set(user.groups.values_list("name", flat=True))
    role = None
    for candidate in (Role.ADMIN, Role.OPERATOR, Role.VIEWER):
        if ROLE_GROUP_NAMES[candidate] in names:
            role = candidate
            break
    user._fleet_role = role  # per-request cache: the user object lives for one request
    return role


def has_role(user: AbstractBaseUser | AnonymousUser | None, required: Role) -> bool:
    """Tell whether ``user`` holds ``required`` or a higher role."""
    role = role_of(user)
    return role is not None and role >= required


def ensure_role_groups() -> dict[Role, Group]:
    """Create the three role groups if missing and return them."""
    return {
        role: Group.objects.get_or_create(name=name)[0] for role, name in ROLE_GROUP_NAMES.items()
    }
