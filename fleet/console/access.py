"""Who may see and do what in the console, and the one place pages are rendered.

Every page needs a logged-in user holding a role; a POST needs ``post_role`` (operator unless a
page says otherwise). The refusal is enforced here, on the server: hiding buttons in templates
is only a courtesy to the user.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from fleet.core.roles import Role, has_role, role_of

View = Callable[..., HttpResponse]
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def console_view(*, post_role: Role = Role.OPERATOR,
                 read_role: Role = Role.VIEWER) -> Callable[[View], View]:
    """Wrap a page: login required, ``read_role`` (any role by default) to read, ``post_role``
    or higher to write."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if role_of(request.user) is None:
                return forbidden(request, "Your account has no console role yet. Ask an admin "
                                          "to add you to the viewer, operator or admin group.")
            if not has_role(request.user, read_role):
                return forbidden(request, f"This page needs the {read_role.label} role.")
            if request.method not in SAFE_METHODS and not has_role(request.user, post_role):
                return forbidden(request, f"This action needs the {post_role.label} role.")
            return view(request, *args, **kwargs)

        return login_required(wrapped)

    return decorate


def forbidden(request: HttpRequest, message: str) -> HttpResponse:
    """Answer 403 with a console page that says why."""
    return render_page(request, "console/403.html", {"message": message}, status=403)


def render_page(
    request: HttpRequest, template: str, context: dict[str, Any] | None = None, *,
    status: int = 200,
) -> HttpResponse:
    """Render a console template with the user's role flags the layout and buttons rely on."""
    role = role_of(request.user)
    base = {
        "role": role,
        "role_name": role.label if role is not None else "no role",
        "can_operate": has_role(request.user, Role.OPERATOR),
        "can_admin": has_role(request.user, Role.ADMIN),
    }
    return render(request, template, {**base, **(context or {})}, status=status)
