"""One model version: its validation report, conversion progress, packages, package builds."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect

from fleet.console.access import console_view, render_page
from fleet.console.forms import BuildPackageForm
from ota.choices import Encoding, VersionStatus
from ota.errors import OtaError
from ota.models import ModelVersion, ProfileCompatibility
from ota.packaging.actions import do_build_package


def profile_rows(mv: ModelVersion) -> list[dict[str, Any]]:
    """Join each profile's verdict with the report's figures (arena and slot use)."""
    reported = {c["profile"]: c for c in (mv.validation or {}).get("compatibility", [])}
    rows = []
    verdicts = (ProfileCompatibility.objects.filter(model_version=mv)
                .select_related("hardware_profile").order_by("hardware_profile__name"))
    for verdict in verdicts:
        profile = verdict.hardware_profile
        figures = reported.get(profile.name, {})
        arena = figures.get("arena") or {}
        need = verdict.arena_bytes_required
        rows.append({
            "profile": profile,
            "compatible": verdict.compatible,
            "reasons": verdict.reasons,
            "arena_required": need,
            "arena_available": profile.arena_ram_bytes,
            "arena_percent": _percent(need, profile.arena_ram_bytes),
            "arena_margin": figures.get("arena_margin_bytes", arena.get("margin_bytes")),
            # "measured: cortex-m4, cmsis-nn" or "estimated" (and why), per profile.
            "arena_method": figures.get("arena_method"),
            "arena_method_reason": figures.get("arena_method_reason"),
            "instructions": figures.get("instructions_per_inference"),
            "model_bytes": figures.get("model_bytes", mv.size_bytes),
            "slot_bytes": profile.model_slot_bytes,
            "slot_percent": _percent(figures.get("model_bytes", mv.size_bytes),
                                     profile.model_slot_bytes),
        })
    return rows


def _percent(used: int | None, available: int) -> float | None:
    return None if used is None or not available else min(used / available * 100, 100.0)


def _render(request: HttpRequest, mv: ModelVersion, form: BuildPackageForm | None = None,
            status: int = 200) -> HttpResponse:
    report = mv.validation or {}
    inspection = report.get("inspection") or {}
    subgraphs = inspection.get("subgraphs") or []
    job = getattr(mv, "conversion_job", None)
    form = form or BuildPackageForm(version=mv)
    return render_page(request, "console/models/version.html", {
        "nav": "models",
        "mv": mv,
        "report": report,
        "inspection": inspection,
        "probe": report.get("probe") or {},
        "tensors": subgraphs[0]["tensors"] if subgraphs else [],
        "rows": profile_rows(mv),
        "job": job,
        "converting": mv.status == VersionStatus.CONVERTING,
        "packages": mv.packages.select_related("hardware_profile", "base_version__model",
                                               "signing_key").order_by("-id"),
        "build_form": form,
        "ready": mv.status == VersionStatus.READY,
        "buildable": form.fields["hardware_profile"].queryset.exists(),
        "labels": list(mv.model.labels),
    }, status=status)


def _version(pk: int) -> ModelVersion:
    return get_object_or_404(
        ModelVersion.objects.select_related("model", "created_by", "conversion_job"), pk=pk)


@console_view()
def version_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Show the admission report of a version (or its conversion progress) and its packages."""
    return _render(request, _version(pk))


@console_view()
def package_build(request: HttpRequest, pk: int) -> HttpResponse:
    """Build a signed package of this version for one profile (POST); GET shows the version."""
    mv = _version(pk)
    if request.method != "POST":
        return redirect("console:version-detail", pk=mv.pk)
    form = BuildPackageForm(request.POST, version=mv)
    if form.is_valid():
        data = form.cleaned_data
        encoding = Encoding[data["encoding"].upper()] if data["encoding"] else None
        try:
            package = do_build_package(mv, data["hardware_profile"], actor=request.user,
                                       base=data["base_version"], encoding=encoding)
        except OtaError as exc:
            form.add_error(None, exc.detail)
        else:
            messages.success(request, f"Package #{package.pk} built for "
                                      f"{package.hardware_profile.name} "
                                      f"({package.get_encoding_display()}, "
                                      f"{package.transfer_size:,} bytes to transfer).")
            return redirect("console:version-detail", pk=mv.pk)
    return _render(request, mv, form, status=400)
