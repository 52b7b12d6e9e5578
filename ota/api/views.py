"""Viewsets of the registry, packaging and signing-key API."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.roles import Role
from fleet.core.uploads import check_request_size
from ota.api import serializers as s
from ota.choices import Encoding
from ota.jobs.revalidation import do_request_revalidation
from ota.models import Model, ModelVersion, Package, RevalidationJob, SigningKey
from ota.packaging.actions import do_build_package
from ota.registry import actions as registry
from ota.registry.limits import largest_upload_request
from ota.rollouts.actions import do_register_factory_version
from ota.signing.actions import (
    do_activate_signing_key,
    do_retire_signing_key,
    do_rotate_signing_key,
)


class ModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                   viewsets.GenericViewSet):
    """ML models; their versions are under /api/v1/model-versions/."""

    queryset = Model.objects.annotate(version_count=Count("versions"))
    serializer_class = s.ModelSerializer
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
    filterset_fields = ["name"]
    write_role = Role.OPERATOR

    def perform_create(self, serializer: s.ModelSerializer) -> None:
        serializer.instance = registry.do_create_model(actor=self.request.user,
                                                       **serializer.validated_data)
        serializer.instance.version_count = 0


class ModelVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                          viewsets.GenericViewSet):
    """Immutable model versions with their admission report. Upload is multipart."""

    queryset = (ModelVersion.objects.select_related("model", "conversion_job")
                .prefetch_related("compatibility__hardware_profile"))
    filterset_fields = ["model__name", "status", "source", "version"]
    search_fields = ["model__name", "version", "notes"]
    ordering_fields = ["created_at", "version"]
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    write_role = Role.OPERATOR

    def get_serializer_class(self) -> type:
        if self.action == "create":
            return s.ModelVersionUploadSerializer
        if self.action == "retrieve":
            return s.ModelVersionDetailSerializer
        return s.ModelVersionSerializer

    @extend_schema(request={"multipart/form-data": s.ModelVersionUploadSerializer},
                   responses={201: s.ModelVersionDetailSerializer,
                              202: s.ModelVersionDetailSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Upload a .tflite (validated now: 201) or a Keras model to convert (queued: 202).

        Sizes are checked before any file is read: the request's Content-Length first (413
        before parsing), then each file's size against its limit (413, ``file_too_large``)."""
        check_request_size(request, largest_upload_request())
        upload = s.ModelVersionUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = upload.validated_data
        if "file" in data:
            mv = registry.do_upload_version(
                data["model"], version=data["version"], data=data["file"].read(),
                notes=data["notes"], actor=request.user,
                samples=data["samples"].read() if "samples" in data else None,
            )
            code = status.HTTP_201_CREATED
        else:
            mv = registry.do_request_conversion(
                data["model"], version=data["version"], keras=data["keras"].read(),
                dataset=data["dataset"].read(), notes=data["notes"], actor=request.user,
            )
            code = status.HTTP_202_ACCEPTED
        mv = self.get_queryset().get(pk=mv.pk)
        return Response(s.ModelVersionDetailSerializer(mv).data, status=code)

    @extend_schema(request=None, responses={202: s.RevalidationJobSerializer})
    @action(detail=True, methods=["post"])
    def revalidate(self, request: Request, pk: str | None = None) -> Response:
        """Queue the admission check of this version against every current profile (a worker
        runs it; progress under /api/v1/revalidation-jobs/)."""
        job = do_request_revalidation(actor=request.user, version=self.get_object())
        return Response(s.RevalidationJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=s.FactoryVersionRequestSerializer,
                   responses={200: s.FactoryVersionSerializer})
    @action(detail=True, methods=["post"])
    def factory(self, request: Request, pk: str | None = None) -> Response:
        """Register this version as what a profile's devices run from the factory (package 0):
        a rollback of devices that ran package 0 then ships it."""
        body = s.FactoryVersionRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        factory = do_register_factory_version(self.get_object(), body.validated_data[
            "hardware_profile"], actor=request.user)
        return Response(s.FactoryVersionSerializer(factory).data)


class RevalidationJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                             viewsets.GenericViewSet):
    """Re-validations of versions after a hardware profile was created or edited."""

    queryset = RevalidationJob.objects.select_related("hardware_profile")
    serializer_class = s.RevalidationJobSerializer
    filterset_fields = ["state", "hardware_profile__name", "model_version"]
    ordering_fields = ["created_at"]


class PackageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                     viewsets.GenericViewSet):
    """Signed OTA packages; ``manifest/`` returns the raw COSE_Sign1 bytes."""

    queryset = Package.objects.select_related("model_version__model", "hardware_profile",
                                              "signing_key")
    serializer_class = s.PackageSerializer
    filterset_fields = ["model_version", "hardware_profile__name", "encoding"]
    ordering_fields = ["created_at", "sequence"]
    write_role = Role.OPERATOR

    def perform_create(self, serializer: s.PackageSerializer) -> None:
        data = serializer.validated_data
        encoding = data.get("encoding")
        serializer.instance = do_build_package(
            data["model_version"], data["hardware_profile"], actor=self.request.user,
            base=data.get("base_version"),
            encoding=Encoding[encoding.upper()] if encoding else None,
        )

    @extend_schema(responses={(200, "application/cose"): OpenApiResponse(description="COSE_Sign1")})
    @action(detail=True, methods=["get"])
    def manifest(self, request: Request, pk: str | None = None) -> HttpResponse:
        """Return the signed manifest exactly as devices receive it."""
        package = self.get_object()
        response = HttpResponse(bytes(package.manifest), content_type="application/cose")
        response["Content-Disposition"] = f'attachment; filename="package-{package.pk}.cose"'
        return response


class SigningKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                        viewsets.GenericViewSet):
    """OTA signing public keys (private halves never leave the server). Admins rotate."""

    queryset = SigningKey.objects.select_related("introduced_by")
    serializer_class = s.SigningKeySerializer
    lookup_field = "kid"
    filterset_fields = ["state"]
    write_role = Role.ADMIN

    @extend_schema(request=None, responses={201: s.SigningKeySerializer})
    @action(detail=False, methods=["post"])
    def rotate(self, request: Request) -> Response:
        """Create a new key introduced by a rotation record signed with the current key."""
        key = do_rotate_signing_key(actor=request.user)
        return Response(self.get_serializer(key).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.SigningKeySerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, kid: str | None = None) -> Response:
        """Make a pending key the signer, once enough of the fleet trusts it (``trust.share``
        at least KEY_ACTIVATION_SHARE); ``{"force": true}`` skips that check."""
        force = str(request.data.get("force", "")).lower() in ("1", "true", "yes")
        key = do_activate_signing_key(self.get_object(), actor=request.user, force=force)
        return Response(self.get_serializer(key).data)

    @extend_schema(request=None, responses=s.SigningKeySerializer)
    @action(detail=True, methods=["post"])
    def retire(self, request: Request, kid: str | None = None) -> Response:
        """Stop trusting and using a key (never the last active one)."""
        key = do_retire_signing_key(self.get_object(), actor=request.user)
        return Response(self.get_serializer(key).data)
