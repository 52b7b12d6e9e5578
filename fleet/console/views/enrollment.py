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

# The plain token travels to the next GET in the session and is popped there: a reload or the
# back button never shows it again, and the POST is never re-submitted.
NEW_TOKEN_KEY = "console_new_token"


@console_view()
def enrollment(request: HttpRequest) -> HttpResponse:
    """List tokens; operators create one (POST) and see its plain text once."""
    form = EnrollmentTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        token, plain = do_create_enrollment_token(
            actor=request.user, expires_at=form.expires_at(), max_uses=data["max_uses"],
            name=data["name"], group=data["group"], hardware_profile=data["hardware_profile"],
        )
        request.session[NEW_TOKEN_KEY] = {"id": token.pk, "plain": plain}
        return redirect("console:enrollment")
    tokens = EnrollmentToken.objects.select_related("group", "hardware_profile", "created_by")
    return render_page(request, "console/enrollment.html", {
        "nav": "enrollment",
        "form": form,
        "new_token": request.session.pop(NEW_TOKEN_KEY, None),
        "tokens": Paginator(tokens, 25).get_page(request.GET.get("page")),
    }, status=400 if form.errors else 200)


@require_POST
@console_view()
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Revoke a token: it enrolls no further device (devices it enrolled stay)."""
    token = get_object_or_404(EnrollmentToken, pk=pk)
    do_revoke_enrollment_token(token, actor=request.user)
    messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect("console:enrollment")
