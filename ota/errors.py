"""The error every ota action raises to refuse a request, with a stable reason code."""

from __future__ import annotations

from fleet.core.errors import Refused


class OtaError(Refused):
    """A refused registry, packaging or rollout request."""
