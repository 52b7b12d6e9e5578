"""Users and roles (admins only): list, create, change role, deactivate and reactivate."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from fleet.accounts.actions import do_create_user, do_set_user_active, do_set_user_role
from fleet.console.access import console_view, render_page
from fleet.console.admin_forms import UserCreateForm, UserRoleForm
from fleet.core.errors import Refused
from fleet.core.roles import ROLE_GROUP_NAMES, Role, role_of

ADMIN_ONLY = {"read_role": Role.ADMIN, "post_role": Role.ADMIN}
_ROLE_BY_NAME = {name: role for role, name in ROLE_GROUP_NAMES.items()}


@console_view(**ADMIN_ONLY)
def user_list(request: HttpRequest) -> HttpResponse:
    """List users with their role and state; create one (POST)."""
    form = UserCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        user = do_create_user(data["username"], data["password"], _ROLE_BY_NAME[data["role"]],
                              actor=request.user, email=data["email"])
        messages.success(request, f"User {user.username} created as {data['role']}.")
        return redirect("console:users")
    users = get_user_model().objects.prefetch_related("groups").order_by("username")
    page = Paginator(users, 50).get_page(request.GET.get("page"))
    for user in page:
        role = role_of(user) if user.is_active else _inactive_role(user)
        user.role_name = ROLE_GROUP_NAMES[role] if role else "none"
    return render_page(request, "console/users.html", {
        "nav": "users", "form": form, "users": page,
        "role_choices": list(ROLE_GROUP_NAMES.values()),
    }, status=400 if form.errors else 200)


def _inactive_role(user: object) -> Role | None:
    """The role an inactive user would have (role_of says None for inactive users)."""
    names = {g.name for g in user.groups.all()}  # type: ignore[attr-defined]
    return next((r for r in (Role.ADMIN, Role.OPERATOR, Role.VIEWER)
                 if ROLE_GROUP_NAMES[r] in names), None)


@require_POST
@console_view(**ADMIN_ONLY)
def user_role(request: HttpRequest, pk: int) -> HttpResponse:
    """Give a user another role."""
    user = get_object_or_404(get_user_model(), pk=pk)
    form = UserRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose viewer, operator or admin.")
        return redirect("console:users")
    try:
        do_set_user_role(user, _ROLE_BY_NAME[form.cleaned_data["role"]], actor=request.user)
    except Refused as exc:
        messages.error(request, f"Role not changed: {exc.detail}")
    else:
        messages.success(request, f"{user.username} is now {form.cleaned_data['role']}.")
    return redirect("console:users")


@require_POST
@console_view(**ADMIN_ONLY)
def user_active(request: HttpRequest, pk: int) -> HttpResponse:
    """Deactivate a user (``active=0``: no login, API token refused) or reactivate them."""
    user = get_object_or_404(get_user_model(), pk=pk)
    active = request.POST.get("active") == "1"
    try:
        do_set_user_active(user, active, actor=request.user)
    except Refused as exc:
        messages.error(request, f"Not changed: {exc.detail}")
    else:
        messages.success(request, f"{user.username} {'reactivated' if active else 'deactivated'}.")
    return redirect("console:users")
