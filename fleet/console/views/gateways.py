"""Serial gateways: list, provision (password and token shown once), detail with children,
re-provision and revoke."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from fleet.console.access import console_view, render_page
from fleet.console.admin_forms import GatewayProvisionForm
from fleet.core.errors import Refused
from fleet.devices.gateway_actions import do_provision_gateway, do_revoke_gateway
from fleet.devices.models import Gateway


def _provision(request: HttpRequest, form: GatewayProvisionForm) -> dict | None:
    """Run the provisioning action; return the once-shown credential or None (form errors)."""
    data = form.cleaned_data
    try:
        credential = do_provision_gateway(uid=data["uid"], children=data["children"],
                                          name=data["name"] or None, actor=request.user)
    except Refused as exc:
        form.add_error(None, exc.detail)
        return None
    return {"uid": credential.gateway.uid, "password": credential.password,
            "api_token": credential.api_token, "created": credential.created}


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"  # the secrets stay out of the browser cache
    return response


@console_view()
def gateway_list(request: HttpRequest) -> HttpResponse:
    """List gateways with their children counts; operators provision one (POST)."""
    form = GatewayProvisionForm(request.POST or None)
    secret = _provision(request, form) if request.method == "POST" and form.is_valid() else None
    if secret is not None:
        form = GatewayProvisionForm()
    gateways = Gateway.objects.annotate(child_count=Count("children")).order_by("uid")
    response = render_page(request, "console/gateways/list.html", {
        "nav": "gateways", "form": form, "secret": secret,
        "gateways": Paginator(gateways, 50).get_page(request.GET.get("page")),
    }, status=400 if form.errors else 200)
    return _no_store(response) if secret else response


@console_view()
def gateway_detail(request: HttpRequest, uid: str) -> HttpResponse:
    """Show a gateway and its children; operators re-provision it (POST: new children,
    password and token)."""
    gateway = get_object_or_404(Gateway.objects.select_related("created_by"), uid=uid)
    initial = {"uid": gateway.uid, "name": gateway.name,
               "children": "\n".join(gateway.children.values_list("uid", flat=True))}
    form = GatewayProvisionForm(request.POST or None, initial=initial)
    secret = None
    if request.method == "POST" and form.is_valid():
        if form.cleaned_data["uid"] != gateway.uid:
            form.add_error("uid", "The id of an existing gateway cannot change.")
        else:
            secret = _provision(request, form)
            gateway.refresh_from_db()
    children = gateway.children.select_related("hardware_profile").order_by("uid")
    response = render_page(request, "console/gateways/detail.html", {
        "nav": "gateways", "gateway": gateway, "form": form, "secret": secret,
        "children": children,
    }, status=400 if form.errors else 200)
    return _no_store(response) if secret else response


@require_POST
@console_view()
def gateway_revoke(request: HttpRequest, uid: str) -> HttpResponse:
    """Revoke a gateway: its broker identity goes at once; its children stay enrolled."""
    gateway = get_object_or_404(Gateway, uid=uid)
    if gateway.revoked:
        messages.info(request, f"Gateway {gateway.uid} was already revoked.")
        return redirect("console:gateway-detail", uid=gateway.uid)
    try:
        do_revoke_gateway(gateway, actor=request.user)
    except Refused as exc:
        messages.error(request, f"Not revoked: {exc.detail}")
    else:
        messages.success(request, f"Gateway {gateway.uid} revoked; it has lost broker access.")
    return redirect("console:gateway-detail", uid=gateway.uid)
