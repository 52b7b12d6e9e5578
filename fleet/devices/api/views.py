"""Viewsets of the devices API: they declare; the actions module does the writing."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Count, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.audit.viewsets import AuditedModelViewSet
from fleet.core.api import ApiError, client_address
from fleet.core.roles import Role
from fleet.core.throttling import ClientRateThrottle
from fleet.devices import actions
from fleet.devices.api import listing
from fleet.devices.api import serializers as s
from fleet.devices.api.authentication import GatewayTokenAuthentication, gateway_of
from fleet.devices.filtersets import (
    DeviceFilterSet,
    EnrollmentTokenFilterSet,
    HardwareProfileFilterSet,
)
from fleet.devices.models import Device, DeviceGroup, EnrollmentToken, Gateway, HardwareProfile
from fleet.devices.proof import NONCE_LIFETIME_S, issue_nonce
from fleet.devices.trust import broker_ca_pem, published_signing_keys


class HardwareProfileViewSet(AuditedModelViewSet):
    """MCU classes: arena RAM, model slot flash, kernel set, registered ops. Admins edit."""

    queryset = HardwareProfile.objects.all()
    serializer_class = s.HardwareProfileSerializer
    filterset_class = HardwareProfileFilterSet
    search_fields = ["name", "mcu", "display_name"]
    ordering_fields = ["name", "arena_ram_bytes", "model_slot_bytes"]
    audit_noun = "hardware_profile"
    write_role = Role.ADMIN


class DeviceGroupViewSet(AuditedModelViewSet):
    """Device groups. Operators create and edit them."""

    queryset = DeviceGroup.objects.annotate(device_count=Count("device"))
    serializer_class = s.DeviceGroupSerializer
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
    filterset_fields = ["name"]
    audit_noun = "device_group"
    write_role = Role.OPERATOR


class DeviceViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Enrolled devices. Devices are created only by enrollment; operators edit and revoke."""

    queryset = Device.objects.select_related("hardware_profile", "group").prefetch_related("tags")
    serializer_class = s.DeviceSerializer
    filterset_class = DeviceFilterSet
    search_fields = ["uid", "name"]
    ordering_fields = ["uid", "name", "last_seen", "created_at", "state"]
    lookup_field = "uid"
    read_role = Role.VIEWER
    write_role = Role.OPERATOR
    broker_errors = ("revoke",)  # 503 in the schema: the broker must learn of it

    def get_queryset(self) -> QuerySet[Device]:
        # The list joins only what it filters on and reads columns (listing.py); the
        # instance-based actions keep the related rows the serializer walks.
        return Device.objects.all() if self.action == "list" else super().get_queryset()

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Devices, filtered and paged; each as ``DeviceSerializer`` shows it."""
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(listing.ColumnPages(queryset))
        if page is None:  # pagination switched off: the whole list
            return Response(listing.rows(list(listing.page_columns(queryset))))
        return self.get_paginated_response(listing.rows(page))

    def perform_update(self, serializer: s.DeviceSerializer) -> None:
        data = serializer.validated_data
        actions.do_update_device(
            serializer.instance,
            actor=self.request.user,
            name=data.get("name"),
            group=data["group"] if "group" in data else False,
            tags=data.get("tag_names"),
        )

    @extend_schema(request=None, responses=s.DeviceSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, uid: str | None = None) -> Response:
        """Revoke a device: it loses broker access at once and cannot enroll again."""
        device = actions.do_revoke_device(self.get_object(), actor=request.user)
        return Response(self.get_serializer(device).data)


class EnrollmentTokenViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Claim tokens. The plain token is in the create response only; it is stored hashed."""

    queryset = EnrollmentToken.objects.select_related("group", "hardware_profile", "created_by")
    serializer_class = s.EnrollmentTokenSerializer
    filterset_class = EnrollmentTokenFilterSet
    search_fields = ["name", "prefix"]
    ordering_fields = ["created_at", "expires_at"]
    read_role = Role.VIEWER
    write_role = Role.OPERATOR

    @extend_schema(responses={201: s.EnrollmentTokenCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        token, plain = actions.do_create_enrollment_token(
            actor=request.user,
            expires_at=serializer.validated_expiry(),
            max_uses=data["max_uses"],
            name=data.get("name", ""),
            group=data.get("group"),
            hardware_profile=data.get("hardware_profile"),
            uid_pattern=data.get("uid_pattern", ""),
            allowed_uids=data.get("allowed_uids"),
        )
        token.token = plain
        body = s.EnrollmentTokenCreatedSerializer(token, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.EnrollmentTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Revoke a token: it enrolls no further device."""
        token = self.get_object()
        actions.do_revoke_enrollment_token(token, actor=request.user)
        return Response(self.get_serializer(token).data)


class EnrollViewSet(viewsets.GenericViewSet):
    """Device enrollment: no user auth; the claim token and the device's signature are the
    credentials. Rate-limited. A serial gateway relaying an MCU's signed request adds its own
    ``Authorization: Gateway <token>``: the device then becomes its child."""

    serializer_class = s.EnrollRequestSerializer
    authentication_classes = [GatewayTokenAuthentication]
    public_actions = ("create", "challenge")
    broker_errors = ("create",)  # 503 in the schema: the broker must learn the credential
    throttle_classes = [ClientRateThrottle]
    throttle_scope = "enroll"

    def get_queryset(self) -> QuerySet[Device]:
        return Device.objects.none()

    @extend_schema(request=None, responses={200: s.EnrollChallengeSerializer})
    @action(detail=False, methods=["post"], throttle_scope="enroll_challenge")
    def challenge(self, request: Request) -> Response:
        """Hand out a nonce for the device to sign in its enrollment request (writes nothing)."""
        return Response({"nonce": issue_nonce().hex(), "expires_in": NONCE_LIFETIME_S})

    @extend_schema(
        request=s.EnrollRequestSerializer,
        responses={201: s.EnrollResponseSerializer, 200: s.EnrollResponseSerializer},
    )
    def create(self, request: Request) -> Response:
        """Enroll a device: token, public key, hardware profile, capabilities and a signature
        by the device's key over them and a fresh nonce in; id and MQTT credential out (201
        when created, 200 when the same key enrolls again). With X.509 broker access the
        credential is a client certificate for the enrolled key (``mqtt.client_certificate``)
        and ``mqtt.credential`` is empty."""
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.ENROLL_MAX_BODY_BYTES or len(request.body) > settings.ENROLL_MAX_BODY_BYTES:
            raise ApiError("payload_too_large",
                           f"Enrollment bodies are limited to {settings.ENROLL_MAX_BODY_BYTES} bytes.",
                           status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        caller = gateway_of(request)
        result = actions.do_enroll_device(
            token=data["token"],
            public_key_pem=data["public_key"],
            hardware=data["hardware"],
            capabilities=dict(data["capabilities"]),
            proof=actions.EnrollmentProof(data["nonce"], data["signature"],
                                          dict(request.data["capabilities"])),
            uid=data.get("uid"),
            name=data.get("name", ""),
            via=Gateway.objects.get(pk=caller.gateway_id) if caller else None,
            remote_addr=client_address(request),
        )
        mqtt = {
            "url": settings.MQTT_DEVICE_URL,
            "username": result.mqtt_username,
            "credential": result.mqtt_password,
            "ca_cert": broker_ca_pem(),
        }
        if result.certificate is not None:  # X.509 broker access: no password
            mqtt["client_certificate"] = result.certificate.certificate_pem
            mqtt["client_ca"] = result.certificate.ca_pem
        body = {
            "device_id": result.device.uid,
            "created": result.created,
            "mqtt": mqtt,
            "signing_keys": published_signing_keys(),
            "topics_prefix": f"fleet/v1/{result.device.uid}/",
        }
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)
