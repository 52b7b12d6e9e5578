"""The OpenAPI schema is the contract: every operation documents the errors it can answer.

``FleetAutoSchema`` (``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]``) adds the shared ``Error``
component (:class:`ErrorSerializer`, the shape :func:`fleet.core.api.exception_handler` renders)
to each operation for the statuses that operation can answer, derived from what the view
declares, so no view lists them by hand:

- 400: the operation takes a body or query parameters (validation, filters), or writes (an
  action's refusal is 400 unless it says otherwise);
- 401, 403: every operation (no or a bad credential; a role too low, a scoped token used out of
  scope, and the refusals of the public enrollment actions);
- 404: the path names an object;
- 409: a write (actions refuse conflicting state: ``in_use``, ``incompatible``, ...);
- 413: a write with a body (over ``DATA_UPLOAD_MAX_MEMORY_SIZE``, an upload's or a view's own
  limit);
- 429: the view is rate-limited (``throttle_classes``);
- 503: a write that must reach the broker (``broker_errors``: the broker is unavailable).

A view adds or drops statuses for one action with ``schema_errors = {"action": {409, ...}}``
(added) and ``schema_no_errors = {"action": {409}}`` (dropped). What an operation already
declares with ``@extend_schema(responses=...)`` wins.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers
from rest_framework.settings import api_settings

_DESCRIPTIONS = {
    400: "Invalid input: `reason` `invalid` with per-field messages in `fields`, or an action's "
         "refusal reason.",
    401: "No credential, or a credential that is not valid.",
    403: "The role, or the scope of the credential, does not allow this (or the action refused).",
    404: "No such object.",
    409: "The action conflicts with the current state (the `reason` says which).",
    413: "The request body or an uploaded file is over its limit.",
    429: "Too many requests from this client; retry later.",
    503: "A service the action needs (the message broker) is unavailable; nothing was written.",
}
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}


class ErrorSerializer(serializers.Serializer):
    """Every API error: a stable machine code, human text, field errors for invalid input, and
    whatever else the refusal carries (``limit``, per-profile ``refusals``, ...)."""

    reason = serializers.CharField(help_text="machine-readable code, e.g. `token_expired`")
    detail = serializers.CharField(help_text="human-readable text")
    fields = serializers.JSONField(
        required=False, help_text="validation errors per field (only with `reason` `invalid`)")


class FleetAutoSchema(AutoSchema):
    """drf-spectacular's schema with the error responses each operation can answer."""

    def error_statuses(self, operation: dict[str, Any]) -> set[int]:
        """Return the error statuses this operation can answer (see the module docstring)."""
        view, action = self.view, getattr(self.view, "action", None)
        codes = {401, 403}
        params = operation.get("parameters", [])
        if (self.method in _WRITES or "requestBody" in operation
                or any(p.get("in") == "query" for p in params)):
            codes.add(400)
        if any(p.get("in") == "path" for p in params):
            codes.add(404)
        if self.method in _WRITES:
            codes.add(409)
            if action in getattr(view, "broker_errors", ()):
                codes.add(503)
        if "requestBody" in operation and self.method in _WRITES:
            codes.add(413)  # over DATA_UPLOAD_MAX_MEMORY_SIZE, or a view's own limit
        throttles = getattr(view, "throttle_classes", None)
        if throttles is None:
            throttles = api_settings.DEFAULT_THROTTLE_CLASSES
        if throttles:
            codes.add(429)
        codes |= set(getattr(view, "schema_errors", {}).get(action, ()))
        codes -= set(getattr(view, "schema_no_errors", {}).get(action, ()))
        return codes

    def get_operation(self, path: str, path_regex: str, path_prefix: str, method: str,
                      registry: Any) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        error = self._get_response_for_code(ErrorSerializer, "400")
        responses = operation["responses"]
        for code in sorted(self.error_statuses(operation)):
            key = str(code)
            if key not in responses:
                responses[key] = {**error, "description": _DESCRIPTIONS[code]}
        return operation
