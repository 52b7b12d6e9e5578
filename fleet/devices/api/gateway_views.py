"""Serial gateways API: operators provision them; the credentials are in one answer only.

    POST /api/v1/gateways/                    {uid, children, name?} -> gateway + mqtt credential
                                              + gateway_token (re-provisioning replaces both)
    POST /api/v1/gateways/{uid}/children/     {children} -> gateway (its password unchanged);
                                              operators, or the gateway's own token
                                              (``Authorization: Gateway <gateway_token>``)
    POST /api/v1/gateways/{uid}/revoke/       -> gateway (broker identity deleted, token dead)
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

from device_sdk.protocol.enrollment import MAX_NONCE_BYTES, MAX_SIGNATURE_BYTES
from fleet.core.api import client_address
from fleet.core.roles import Role
from fleet.core.throttling import ClientRateThrottle
from fleet.devices import gateway_actions as actions
from fleet.devices.api.authentication import gateway_of
from fleet.devices.api.serializers import HexBytesField, MqttCredentialSerializer
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
                  "api_token_prefix", "revoked", "revoked_at", "state", "last_seen"]
        read_only_fields = fields


class GatewayProvisionSerializer(serializers.Serializer):
    uid = serializers.SlugField(max_length=64)
    name = serializers.CharField(max_length=100, required=False)
    children = _children_field(default=list)


class ChildProofSerializer(serializers.Serializer):
    nonce = HexBytesField(max_bytes=MAX_NONCE_BYTES, help_text="from /api/v1/enroll/challenge/")
    signature = HexBytesField(max_bytes=MAX_SIGNATURE_BYTES,
                              help_text="the child key's signature over the attach message "
                                        "(device_sdk/protocol/enrollment.py), hex")


class GatewayChildrenSerializer(serializers.Serializer):
    children = _children_field(min_length=1)
    proofs = serializers.DictField(
        child=ChildProofSerializer(), required=False, default=dict,
        help_text="per child uid: its proof of possession; required when a gateway's own token "
                  "calls (operators assign children without)")


class GatewayCredentialSerializer(GatewaySerializer):
    """The one answer that carries the gateway's MQTT credential and its API token."""

    created = serializers.BooleanField(read_only=True)
    mqtt = MqttCredentialSerializer(read_only=True)
    gateway_token = serializers.CharField(
        read_only=True,
        help_text="send as 'Authorization: Gateway <token>'; it may only add children to this "
                  "gateway (POST /api/v1/gateways/{uid}/children/)",
    )

    class Meta(GatewaySerializer.Meta):
        fields = GatewaySerializer.Meta.fields + ["created", "mqtt", "gateway_token"]
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
    # The one thing a gateway's own API token may do (on its own uid only: RolePermission).
    gateway_token_actions = ("children",)
    broker_errors = ("create", "children", "revoke")  # 503 in the schema: broker changes
    # Callers with no user behind them (a gateway's token) are rate-limited per client.
    throttle_classes = [ClientRateThrottle]
    throttle_scope = "gateway"

    @extend_schema(request=GatewayProvisionSerializer,
                   responses={201: GatewayCredentialSerializer, 200: GatewayCredentialSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create or re-provision a gateway with exactly ``children``, a fresh MQTT credential
        and a fresh gateway token (201 when created, 200 when updated); both are in this answer
        only, and re-provisioning makes the previous ones stop working."""
        body = GatewayProvisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        result = actions.do_provision_gateway(
            uid=data["uid"], children=data["children"], name=data.get("name"),
            actor=request.user, remote_addr=client_address(request),
        )
        gateway = result.gateway
        gateway.created = result.created
        gateway.mqtt = {
            "url": settings.MQTT_GATEWAY_URL or settings.MQTT_DEVICE_URL,
            "username": gateway.uid,
            "credential": result.password,
            "ca_cert": broker_ca_pem(),
        }
        gateway.gateway_token = result.api_token
        answer = GatewayCredentialSerializer(gateway, context={"request": request}).data
        return Response(answer, status=status.HTTP_201_CREATED if result.created
                        else status.HTTP_200_OK)

    @extend_schema(request=GatewayChildrenSerializer, responses=GatewaySerializer)
    @action(detail=True, methods=["post"])
    def children(self, request: Request, uid: str | None = None) -> Response:
        """Let the gateway also speak for enrolled devices; its credential stays the same.

        Operators may assign any enrolled devices to any gateway. A gateway's own token may
        only attach, to itself, devices that enrolled through it, each proving possession of
        its key (``proofs``); a refusal does not tell which of the named uids exist."""
        body = GatewayChildrenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        caller = gateway_of(request)
        if caller is not None:  # the gateway itself: only its own enrollees, each with a proof
            proofs = {uid: (p["nonce"], p["signature"])
                      for uid, p in body.validated_data["proofs"].items()}
            gateway = actions.do_attach_proven_children(
                self.get_object(), body.validated_data["children"], proofs,
                actor_label=caller.audit_label, remote_addr=client_address(request),
            )
        else:
            gateway = actions.do_add_gateway_children(
                self.get_object(), body.validated_data["children"], actor=request.user,
                remote_addr=client_address(request),
            )
        return Response(self.get_serializer(self.get_queryset().get(pk=gateway.pk)).data)

    @extend_schema(request=None, responses=GatewaySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, uid: str | None = None) -> Response:
        """Revoke a gateway: its broker identity is deleted and its connection closed."""
        gateway = actions.do_revoke_gateway(self.get_object(), actor=request.user,
                                            remote_addr=client_address(request))
        return Response(self.get_serializer(self.get_queryset().get(pk=gateway.pk)).data)
