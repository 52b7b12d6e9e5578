"""OTA signing keys: the list; admins rotate and retire keys (with confirmation)."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from fleet.console.access import console_view, render_page
from fleet.core.roles import Role
from ota.errors import OtaError
from ota.models import SigningKey
from ota.signing.actions import (
    do_activate_signing_key,
    do_retire_signing_key,
    do_rotate_signing_key,
    trust_share,
)


@console_view()
def signing_keys(request: HttpRequest) -> HttpResponse:
    """List signing keys (public halves only), newest first, with what each one signed."""
    from django.conf import settings

    keys = list(SigningKey.objects.select_related("introduced_by")
                .annotate(package_count=Count("package")).order_by("-created_at"))
    for key in keys:  # the share of the fleet that reports trusting it (activation's test)
        key.trust = trust_share(key) if key.state != "retired" else None
    return render_page(request, "console/signing.html", {
        "nav": "signing",
        "keys": keys,
        "active_count": sum(1 for k in keys if k.state == "active"),
        "threshold": settings.KEY_ACTIVATION_SHARE,
    })


@require_POST
@console_view(post_role=Role.ADMIN)
def signing_key_rotate(request: HttpRequest) -> HttpResponse:
    """Make a new key, introduced by a rotation record the current key signs."""
    try:
        key = do_rotate_signing_key(actor=request.user)
    except OtaError as exc:
        messages.error(request, f"Not rotated: {exc.detail}")
    else:
        messages.success(request, f"New signing key {key.kid} is pending: devices learn it "
                         "from its rotation record; activate it once they trust it.")
    return redirect("console:signing-keys")


@require_POST
@console_view(post_role=Role.ADMIN)
def signing_key_activate(request: HttpRequest, kid: str) -> HttpResponse:
    """Make a pending key the signer (refused below the trust threshold unless forced)."""
    key = get_object_or_404(SigningKey, kid=kid)
    try:
        do_activate_signing_key(key, actor=request.user, force=bool(request.POST.get("force")))
    except OtaError as exc:
        messages.error(request, f"Not activated: {exc.detail}")
    else:
        messages.success(request, f"Signing key {key.kid} is active; new packages use it.")
    return redirect("console:signing-keys")


@require_POST
@console_view(post_role=Role.ADMIN)
def signing_key_retire(request: HttpRequest, kid: str) -> HttpResponse:
    """Stop trusting and using a key (never the last active one)."""
    key = get_object_or_404(SigningKey, kid=kid)
    try:
        do_retire_signing_key(key, actor=request.user)
    except OtaError as exc:
        messages.error(request, f"Not retired: {exc.detail}")
    else:
        messages.success(request, f"Signing key {key.kid} retired.")
    return redirect("console:signing-keys")
