"""The model registry: models with their versions, new models, version uploads."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from fleet.console.access import console_view, render_page
from fleet.console.forms import ModelCreateForm, VersionUploadForm
from fleet.core.uploads import UploadTooLarge, check_request_size, check_upload_sizes
from ota.errors import OtaError
from ota.models import Model, ModelVersion
from ota.registry.actions import do_create_model, do_request_conversion, do_upload_version
from ota.registry.limits import largest_upload_request, upload_limits

VERSIONS_SHOWN = 8  # per model on the list page; older versions stay reachable by link


def _render_list(
    request: HttpRequest, create_form: ModelCreateForm | None = None,
    upload_form: VersionUploadForm | None = None, status: int = 200,
) -> HttpResponse:
    versions = (ModelVersion.objects.select_related("conversion_job", "model")
                .annotate(profiles=Count("compatibility"),
                          fits=Count("compatibility", filter=Q(compatibility__compatible=True)),
                          package_count=Count("packages", distinct=True))
                .order_by("-created_at"))
    models = (Model.objects.annotate(version_count=Count("versions"))
              .prefetch_related(Prefetch("versions", queryset=versions)))
    rows = [(m, list(m.versions.all())[:VERSIONS_SHOWN]) for m in models]
    return render_page(request, "console/models/list.html", {
        "nav": "models",
        "rows": rows,
        "create_form": create_form or ModelCreateForm(),
        "upload_form": upload_form or VersionUploadForm(initial={
            "model": request.GET.get("model")}),
        "open_form": "create" if create_form else "upload" if upload_form else "",
    }, status=status)


@console_view()
def model_list(request: HttpRequest) -> HttpResponse:
    """List models and their newest versions with status and profile fit."""
    return _render_list(request)


@require_POST
@console_view()
def model_create(request: HttpRequest) -> HttpResponse:
    """Register a model name (versions come by upload)."""
    form = ModelCreateForm(request.POST)
    if form.is_valid():
        try:
            model = do_create_model(actor=request.user, **form.cleaned_data)
        except OtaError as exc:
            form.add_error(None, exc.detail)
        else:
            messages.success(request, f"Model {model.name} created; upload its first version.")
            return redirect(f"{reverse('console:models')}?model={model.name}#upload")
    return _render_list(request, create_form=form, status=400)


@require_POST
@console_view()
def version_upload(request: HttpRequest) -> HttpResponse:
    """Store a .tflite and validate it now, or queue a Keras model for int8 conversion.

    Sizes are checked before any file is read (413 with the reason on the form)."""
    try:
        check_request_size(request, largest_upload_request())
    except UploadTooLarge as exc:
        form = VersionUploadForm()
        form.add_error(None, exc.detail)
        return _render_list(request, upload_form=form, status=413)
    form = VersionUploadForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        try:
            check_upload_sizes({f: data.get(f) for f in ("file", "samples", "keras", "dataset")},
                               upload_limits())
        except UploadTooLarge as exc:
            form.add_error(None, exc.detail)
            return _render_list(request, upload_form=form, status=413)
        try:
            if data["file"]:
                mv = do_upload_version(
                    data["model"], version=data["version"], data=data["file"].read(),
                    actor=request.user, notes=data["notes"],
                    samples=data["samples"].read() if data["samples"] else None)
                messages.success(request,
                                 f"{mv} uploaded and validated: {mv.get_status_display()}.")
            else:
                mv = do_request_conversion(
                    data["model"], version=data["version"], keras=data["keras"].read(),
                    dataset=data["dataset"].read(), actor=request.user, notes=data["notes"])
                messages.info(request, f"{mv} queued for int8 conversion.")
        except OtaError as exc:
            form.add_error(None, exc.detail)
        else:
            return redirect("console:version-detail", pk=mv.pk)
    return _render_list(request, upload_form=form, status=400)
