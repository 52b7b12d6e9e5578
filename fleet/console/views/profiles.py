"""Hardware profiles: list and detail with each profile's budgets; admins create and edit."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect

from fleet.console.access import console_view, render_page
from fleet.console.admin_forms import HardwareProfileForm
from fleet.core.roles import Role
from fleet.devices.models import HardwareProfile
from fleet.devices.profile_actions import do_create_hardware_profile, do_update_hardware_profile
from ota.models import ProfileCompatibility, RevalidationJob


@console_view()
def profile_list(request: HttpRequest) -> HttpResponse:
    """List profiles with their budgets and how many devices each class has."""
    profiles = HardwareProfile.objects.annotate(
        device_count=Count("device", filter=Q(device__revoked_at__isnull=True)))
    return render_page(request, "console/profiles/list.html", {
        "nav": "profiles", "profiles": profiles})


@console_view(post_role=Role.ADMIN)
def profile_create(request: HttpRequest) -> HttpResponse:
    """Create a profile (admins)."""
    form = HardwareProfileForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        profile = do_create_hardware_profile(actor=request.user, name=form.cleaned_data["name"],
                                             **form.action_fields())
        messages.success(request, f"Hardware profile {profile.name} created.")
        return redirect("console:profile-detail", name=profile.name)
    return render_page(request, "console/profiles/form.html", {
        "nav": "profiles", "form": form, "profile": None},
        status=400 if form.errors else 200)


@console_view(post_role=Role.ADMIN)
def profile_detail(request: HttpRequest, name: str) -> HttpResponse:
    """Show a profile's budgets, its devices and the models that fit it; admins edit (POST)."""
    profile = get_object_or_404(HardwareProfile, name=name)
    form = HardwareProfileForm(request.POST or None, instance=profile)
    if request.method == "POST":
        if form.is_valid():
            do_update_hardware_profile(profile, actor=request.user, **form.action_fields())
            messages.success(request, f"Hardware profile {profile.name} saved.")
            return redirect("console:profile-detail", name=profile.name)
        profile.refresh_from_db()
    fits = (ProfileCompatibility.objects.filter(hardware_profile=profile)
            .select_related("model_version__model").order_by("-model_version__created_at")[:20])
    return render_page(request, "console/profiles/detail.html", {
        "nav": "profiles", "profile": profile, "form": form, "fits": fits,
        "device_count": profile.device_set.filter(revoked_at__isnull=True).count(),
        "arena_share": profile.arena_ram_bytes / profile.ram_bytes if profile.ram_bytes else 0,
        "slot_share": profile.model_slot_bytes / profile.flash_bytes
        if profile.flash_bytes else 0,
        "editing": bool(form.errors),
        # The re-validation that saving this profile queued (or the latest over every version).
        "revalidation": RevalidationJob.objects.filter(
            Q(hardware_profile=profile) | Q(hardware_profile=None, model_version=None))
        .order_by("-created_at").first(),
    }, status=400 if form.errors else 200)
