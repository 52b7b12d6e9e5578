"""Users and their roles; admins only."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.accounts.actions import do_create_user
from fleet.accounts.api.serializers import UserSerializer
from fleet.core.roles import ROLE_GROUP_NAMES, Role


class UserViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                  viewsets.GenericViewSet):
    """Console and API users with their role (viewer, operator, admin)."""

    queryset = get_user_model().objects.order_by("username").prefetch_related("groups")
    serializer_class = UserSerializer
    search_fields = ["username", "email"]
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        role = {v: k for k, v in ROLE_GROUP_NAMES.items()}[data["role"]]
        user = do_create_user(data["username"], data["password"], Role(role),
                              actor=request.user, email=data.get("email", ""))
        return Response(self.get_serializer(user).data, status=status.HTTP_201_CREATED)
