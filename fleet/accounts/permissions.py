"""DRF permission that maps each view action to the role it needs."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from fleet.accounts.principals import GatewayPrincipal
from fleet.core.roles import Role, has_role


class ScopeDenied(PermissionDenied):
    """A scoped (non-user) credential used outside its scope: 403 with a ``reason`` code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class RolePermission(BasePermission):
    """Allow a request when the user holds the role the view asks for.

    Views declare ``read_role`` (safe methods), ``write_role`` (everything else) and optionally
    ``action_roles`` ({action name: role}) for custom actions. ``public_actions`` lists actions
    open to anonymous callers (device enrollment). ``gateway_token_actions`` lists the actions
    a gateway's own API token may call, on its own gateway only (the view's lookup value must
    be the gateway's uid); that token is refused everywhere else.
    """

    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        action = getattr(view, "action", None)
        if action in getattr(view, "public_actions", ()):
            return True
        if isinstance(request.auth, GatewayPrincipal):
            return _gateway_may(request.auth, view)
        return has_role(request.user, required_role(request, view))

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        if isinstance(request.auth, GatewayPrincipal):
            # Second line of defence behind the lookup check: the object is the gateway itself.
            return (getattr(obj, "pk", None), getattr(obj, "uid", None)) == (
                request.auth.gateway_id, request.auth.uid)
        return True


def required_role(request: Request, view: Any) -> Role:
    """Return the role a request to ``view`` needs."""
    action = getattr(view, "action", None)
    roles = getattr(view, "action_roles", {})
    if action in roles:
        return roles[action]
    if request.method in SAFE_METHODS:
        return getattr(view, "read_role", Role.VIEWER)
    return getattr(view, "write_role", Role.ADMIN)


def _gateway_may(gateway: GatewayPrincipal, view: Any) -> bool:
    """Allow a gateway token exactly the actions its view names, on its own uid; else refuse
    with a reason (raises)."""
    action = getattr(view, "action", None)
    if action is None or action not in getattr(view, "gateway_token_actions", ()):
        raise ScopeDenied(
            "gateway_token_scope",
            "A gateway token may only add children to its own gateway "
            f"(POST /api/v1/gateways/{gateway.uid}/children/).",
        )
    lookup = getattr(view, "lookup_url_kwarg", None) or getattr(view, "lookup_field", "pk")
    target = getattr(view, "kwargs", {}).get(lookup)
    if target != gateway.uid:
        raise ScopeDenied(
            "gateway_token_not_this_gateway",
            f"This token belongs to gateway {gateway.uid}; it cannot act for gateway {target}.",
        )
    return True
