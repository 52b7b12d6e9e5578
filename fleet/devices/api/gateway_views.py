"""Serial gateways API: operators provision them; the credential is in one answer only.

    POST /api/v1/gateways/                    {uid, children, name?} -> gateway + mqtt credential
    POST /api/v1/gateways/{uid}/children/     {children} -> gateway (its password unchanged)
    POST /api/v1/gateways/{uid}/revoke/       -> gateway (broker identity deleted)
    GET  /api/v1/gateways/[{uid}/]            viewers (with its presence: state, last_seen)
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.accounts.roles import Role
from fleet.core.api import ApiError, client_address
from fleet.devices import gateway_actions as actions
from fleet.devices.api.serializers import MqttCredentialSerializer
from fleet.devices.models import Gateway
from fleet.devices.trust import broker_ca_pem


def _children_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(child=serializers.SlugField(max_length=64),
                                 max_length=actions.MAX_CHILDREN, **kwargs)


class GatewaySerializer(serializers.ModelSerializer):
    """A gateway as listed: never its credential."""

    children = serializers.SlugRelatedField(slug_field="uid", many=True, read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    revoked = serializers.BooleanField(read_only=True)

    class Meta:
        model = Gateway
        # state/last_seen: the gateway's presence from its own status (and last will).
        fields = ["uid", "name", "children", "created_by", "created_at", "credential_issued_at",
                  "revoked", "revoked_at", "state", "last_seen"]
        read_only_fields = fields


class GatewayProvisionSerializer(serializers.Serializer):
    uid = serializers.SlugField(max_length=64)
    name = serializers.CharField(max_length=100, required=False)
    children = _children_field(default=list)


class GatewayChildrenSerializer(serializers.Serializer):
    children = _children_field(min_length=1)


class GatewayCredentialSerializer(GatewaySerializer):
    """The one answer that carries the gateway's MQTT credential."""

    created = serializers.BooleanField(read_only=True)
    mqtt = MqttCredentialSerializer(read_only=True)

    class Meta(GatewaySerializer.Meta):
        fields = GatewaySerializer.Meta.fields + ["created", "mqtt"]
        read_only_fields = fields


class GatewayViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Serial gateways: one broker identity speaking for the MCUs wired to it."""

    queryset = Gateway.objects.select_related("created_by").prefetch_related("children")
    serializer_class = GatewaySerializer
    lookup_field = "uid"
    search_fields = ["uid", "name"]
    ordering_fields = ["uid", "created_at", "last_seen"]
    filterset_fields = ["uid", "state"]
    read_role = Role.VIEWER
    write_role = Role.OPERATOR

    @extend_schema(request=GatewayProvisionSerializer,
                   responses={201: GatewayCredentialSerializer, 200: GatewayCredentialSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create or re-provision a gateway with exactly ``children`` and a fresh credential
        (201 when created, 200 when updated); the credential is in this answer only."""
        body = GatewayProvisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            result = actions.do_provision_gateway(
                uid=data["uid"], children=data["children"], name=data.get("name"),
                actor=request.user, remote_addr=client_address(request),
            )
        except actions.GatewayError as exc:
            raise ApiError(exc.reason, exc.detail, exc.status) from None
        gateway = result.gateway
        gateway.created = result.created
        gateway.mqtt = {
            "url": settings.MQTT_DEVICE_URL,
            "username": gateway.uid,
            "credential": result.password,
            "ca_cert": broker_ca_pem(),
        }
        answer = GatewayCredentialSerializer(gateway, context={"request": request}).data
        return Response(answer, status=status.HTTP_201_CREATED if result.created
                        else status.HTTP_200_OK)

    @extend_schema(request=GatewayChildrenSerializer, responses=GatewaySerializer)
    @action(detail=True, methods=["post"])
    def children(self, request: Request, uid: str | None = None) -> Response:
        """Let the gateway also speak for enrolled devices; its credential stays the same."""
        body = GatewayChildrenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            gateway = actions.do_add_gateway_children(
                self.get_object(), body.validated_data["children"], actor=request.user,
                remote_addr=client_address(request),
            )
        except actions.GatewayError as exc:
            raise ApiError(exc.reason, exc.detail, exc.status) from None
        return Response(self.get_serializer(self.get_queryset().get(pk=gateway.pk)).data)

    @extend_schema(request=None, responses=GatewaySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, uid: str | None = None) -> Response:
        """Revoke a gateway: its broker identity is deleted and its connection closed."""
        try:
            gateway = actions.do_revoke_gateway(self.get_object(), actor=request.user,
                                                remote_addr=client_address(request))
        except actions.GatewayError as exc:
            raise ApiError(exc.reason, exc.detail, exc.status) from None
        return Response(self.get_serializer(self.get_queryset().get(pk=gateway.pk)).data)
