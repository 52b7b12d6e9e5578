"""Gateway API tokens: ``Authorization: Gateway fgt_...`` identifies a serial gateway.

The token is issued once, when the gateway is (re)provisioned; the server keeps its SHA-256
only. It authenticates a :class:`~fleet.accounts.principals.GatewayPrincipal` in
``request.auth`` with an anonymous ``request.user``: ``RolePermission`` lets it call only the
actions a view names in ``gateway_token_actions``, on its own gateway, and nothing else.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from fleet.accounts.principals import GatewayPrincipal
from fleet.devices.credentials import hash_secret
from fleet.devices.models import Gateway

KEYWORD = "Gateway"
MAX_TOKEN_CHARS = 128


class GatewayTokenRefused(AuthenticationFailed):
    """A gateway token that no longer opens anything: 401 with a ``reason`` code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class GatewayTokenAuthentication(BaseAuthentication):
    """Authenticate ``Authorization: Gateway <token>`` as the gateway the token was issued to."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, GatewayPrincipal] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != KEYWORD.lower().encode():
            return None  # not ours: user tokens and sessions are other classes' business
        if len(parts) != 2 or len(parts[1]) > MAX_TOKEN_CHARS:
            raise AuthenticationFailed("Invalid gateway token header: 'Gateway <token>'.")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid gateway token.") from None
        gateway = (Gateway.objects.filter(api_token_hash=hash_secret(token))
                   .only("pk", "uid", "revoked_at").first())
        if gateway is None:  # unknown, or replaced when the gateway was re-provisioned
            raise AuthenticationFailed("Invalid gateway token.")
        if gateway.revoked:
            raise GatewayTokenRefused("gateway_revoked",
                                      f"Gateway {gateway.uid} has been revoked.")
        return AnonymousUser(), GatewayPrincipal(gateway.pk, gateway.uid)

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD


class GatewayTokenScheme(OpenApiAuthenticationExtension):
    """OpenAPI: the gateway token, listed only on the operations that accept it."""

    target_class = GatewayTokenAuthentication
    name = "gatewayTokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return build_bearer_security_scheme_object(header_name="Authorization",
                                                   token_prefix=KEYWORD)

    def get_security_requirement(self, auto_schema: Any) -> dict[str, list[Any]] | None:
        view = auto_schema.view
        if getattr(view, "action", None) in getattr(view, "gateway_token_actions", ()):
            return {self.name: []}
        return None


def gateway_of(request: Any) -> GatewayPrincipal | None:
    """Return the gateway a request authenticated as, or None for users."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, GatewayPrincipal) else None
