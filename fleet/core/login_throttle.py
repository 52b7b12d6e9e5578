"""Console and admin logins: failed attempts counted per username and per client address.

Both login forms check the counters before they authenticate and count each failure, in the
shared throttle cache (every web process sees the same counts). Once either counter is used up,
the form refuses with a message saying so and for how long — even the right password, so
guessing gains nothing by finding it late. Successful logins are not counted.
"""

from __future__ import annotations

import logging
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from fleet.core.throttling import AttemptLimiter, client_ip

log = logging.getLogger(__name__)


def _limiters() -> tuple[AttemptLimiter, AttemptLimiter]:
    return (AttemptLimiter("login-user", settings.LOGIN_RATE_USER),
            AttemptLimiter("login-client", settings.LOGIN_RATE_CLIENT))


class LoginThrottled(forms.ValidationError):
    """Too many failed logins for this username or from this address."""


def check_login_allowed(username: str, request: Any) -> None:
    """Raise :class:`LoginThrottled` when ``username`` or the client used up its attempts."""
    per_user, per_client = _limiters()
    ip = client_ip(request) if request is not None else ""
    blocked = [(limiter, ident) for limiter, ident in ((per_user, username.casefold()),
                                                       (per_client, ip))
               if ident and limiter.blocked(ident)]
    if blocked:
        limiter, ident = blocked[0]
        minutes = max(1, -(-limiter.wait_seconds(ident) // 60))
        log.warning("login throttled: user %r from %s", username, ip)
        raise LoginThrottled(
            f"Too many failed login attempts for this account or from this address. "
            f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            code="throttled",
        )


def record_login_failure(username: str, request: Any) -> None:
    """Count one failed login against the username and the client."""
    per_user, per_client = _limiters()
    if username:
        per_user.record(username.casefold())
    if request is not None:
        per_client.record(client_ip(request))


class ThrottledLoginMixin:
    """Check the counters before authenticating; count a failure."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""  # type: ignore[attr-defined]
        request = getattr(self, "request", None)
        check_login_allowed(username, request)
        try:
            return super().clean()  # type: ignore[misc]
        except forms.ValidationError as exc:
            if getattr(exc, "code", None) == "invalid_login":
                record_login_failure(username, request)
            raise


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    """The console's login form."""


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """Django admin's login form."""
