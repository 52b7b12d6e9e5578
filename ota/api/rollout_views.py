"""Rollouts API: create (checked against every targeted profile), progress, controls."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.roles import Role
from ota.api.rollout_serializers import _SETTINGS, RolloutDetailSerializer, RolloutSerializer
from ota.rollouts import actions
from ota.rollouts.models import Rollout


class RolloutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                     viewsets.GenericViewSet):
    """Staged rollouts of a model version; operators create and control them."""

    queryset = Rollout.objects.select_related("model_version__model").prefetch_related(
        "packages", "target_devices")
    filterset_fields = ["state", "model_version"]
    ordering_fields = ["created_at"]
    search_fields = ["name"]
    write_role = Role.OPERATOR

    def get_serializer_class(self) -> type:
        return RolloutDetailSerializer if self.action != "list" else RolloutSerializer

    @extend_schema(request=RolloutSerializer, responses={201: RolloutDetailSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a rollout; refused (409, per-profile reasons) when the version does not fit."""
        serializer = RolloutSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        d = serializer.validated_data
        rollout = actions.do_create_rollout(
            actor=request.user, name=d["name"], model_version=d["model_version"],
            waves=d["waves"], group=d.get("target_group"), tags=d.get("target_tags"),
            profile=d.get("target_profile"), devices=d.get("target_devices"),
            base_version=d.get("base_version"),
            **{k: d[k] for k in _SETTINGS if k in d},
        )
        if d["start"]:
            rollout = actions.do_start_rollout(rollout, actor=request.user)
        return Response(RolloutDetailSerializer(rollout).data, status=status.HTTP_201_CREATED)

    def _control(self, request: Request, fn: Any, **kwargs: Any) -> Response:
        rollout = fn(self.get_object(), actor=request.user, **kwargs)
        return Response(RolloutDetailSerializer(rollout).data)

    @extend_schema(request=None, responses=RolloutDetailSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Start a draft rollout."""
        return self._control(request, actions.do_start_rollout)

    @extend_schema(request=None, responses=RolloutDetailSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Stop offering (devices already downloading finish)."""
        reason = str(request.data.get("reason", "paused by an operator"))[:300]
        return self._control(request, actions.do_pause_rollout, reason=reason)

    @extend_schema(request=None, responses=RolloutDetailSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Resume a paused rollout; failed devices get another attempt."""
        return self._control(request, actions.do_resume_rollout)

    @extend_schema(request=None, responses=RolloutDetailSerializer)
    @action(detail=True, methods=["post"])
    def abort(self, request: Request, pk: str | None = None) -> Response:
        """Stop for good; unfinished devices are marked failed (aborted)."""
        return self._control(request, actions.do_abort_rollout)

    @extend_schema(request=None, responses={201: RolloutDetailSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """Offer the previous version to every device that took this one (a new rollout)."""
        response = self._control(request, actions.do_rollback_rollout)
        response.status_code = status.HTTP_201_CREATED
        return response
