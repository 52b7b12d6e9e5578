from django.contrib.auth import get_user_model
from rest_framework import serializers

from fleet.core.roles import ROLE_GROUP_NAMES, role_of


class UserSerializer(serializers.ModelSerializer):
    role = serializers.ChoiceField(choices=list(ROLE_GROUP_NAMES.values()))
    password = serializers.CharField(write_only=True, min_length=10, max_length=128)

    class Meta:
        model = get_user_model()
        fields = ["id", "username", "email", "role", "password", "is_active", "last_login"]
        read_only_fields = ["is_active", "last_login"]

    def to_representation(self, instance):  # noqa: ANN001, ANN201
        role = role_of(instance)
        instance.role = ROLE_GROUP_NAMES[role] if role else None
        return super().to_representation(instance)
