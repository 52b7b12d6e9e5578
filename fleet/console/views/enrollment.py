"""Enrollment tokens: create one (its plain text is shown once), list them, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from fleet.console.access import console_view, render_page
from fleet.console.forms import EnrollmentTokenForm
from fleet.devices.actions import do_create_enrollment_token, do_revoke_enrollment_token
from fleet.devices.models import EnrollmentToken

@console_view()
def enrollment(request: HttpRequest) -> HttpResponse:
    """List tokens; operators create one (POST) and see its plain text once.

    The plain token goes out in the answer to the POST and is never stored, not even in the
    session; the page then turns its history entry into a GET so a reload cannot repost.
    """
    form = EnrollmentTokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        token, plain = do_create_enrollment_token(
            actor=request.user, expires_at=form.expires_at(), max_uses=data["max_uses"],
            name=data["name"], group=data["group"], hardware_profile=data["hardware_profile"],
            uid_pattern=data["uid_pattern"],
        )
        new_token = {"id": token.pk, "prefix": token.prefix, "plain": plain}
        form = EnrollmentTokenForm()
    tokens = EnrollmentToken.objects.select_related("group", "hardware_profile", "created_by")
    response = render_page(request, "console/enrollment.html", {
        "nav": "enrollment",
        "form": form,
        "new_token": new_token,
        "tokens": Paginator(tokens, 25).get_page(request.GET.get("page")),
    }, status=400 if form.errors else 200)
    if new_token is not None:
        response["Cache-Control"] = "no-store"  # keep the secret out of the browser cache
    return response


@require_POST
@console_view()
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Revoke a token: it enrolls no further device (devices it enrolled stay)."""
    token = get_object_or_404(EnrollmentToken, pk=pk)
    do_revoke_enrollment_token(token, actor=request.user)
    messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect("console:enrollment")
