"""DRF permission that maps each view action to the role it needs."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from fleet.accounts.roles import Role, has_role


class RolePermission(BasePermission):
    """Allow a request when the user holds the role the view asks for.

    Views declare ``read_role`` (safe methods), ``write_role`` (everything else) and optionally
    ``action_roles`` ({action name: role}) for custom actions. ``public_actions`` lists actions
    open to anonymous callers (device enrollment).
    """

    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        action = getattr(view, "action", None)
        if action in getattr(view, "public_actions", ()):
            return True
        return has_role(request.user, required_role(request, view))


def required_role(request: Request, view: Any) -> Role:
    """Return the role a request to ``view`` needs."""
    action = getattr(view, "action", None)
    roles = getattr(view, "action_roles", {})
    if action in roles:
        return roles[action]
    if request.method in SAFE_METHODS:
        return getattr(view, "read_role", Role.VIEWER)
    return getattr(view, "write_role", Role.ADMIN)
