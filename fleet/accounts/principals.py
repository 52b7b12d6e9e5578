"""Callers that are not users: credentials scoped to one thing, carried in ``request.auth``.

Such a caller's ``request.user`` stays anonymous, so no role check, console page or audit entry
ever takes it for a person; only a permission that looks at ``request.auth`` can let it in
(``RolePermission`` does, for the view actions that name it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayPrincipal:
    """A serial gateway authenticated by its gateway API token.

    It may call the view actions listed in the view's ``gateway_token_actions``, and only on
    its own gateway (the view's lookup value must be its ``uid``).
    """

    gateway_id: int
    uid: str

    @property
    def audit_label(self) -> str:
        """Return how audit entries name this caller."""
        return f"gateway:{self.uid}"
