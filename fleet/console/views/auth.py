"""Log in and out of the console (Django's session auth; the form fields are fixed)."""

from __future__ import annotations

from django.contrib.auth.views import LoginView, LogoutView
from django.urls import reverse_lazy

from fleet.core.login_throttle import ThrottledAuthenticationForm


class ConsoleLoginView(LoginView):
    """The login form: fields ``username`` and ``password`` (outside checks rely on them)."""

    template_name = "console/login.html"
    authentication_form = ThrottledAuthenticationForm  # failed attempts limited per user/client
    redirect_authenticated_user = True
    next_page = reverse_lazy("console:overview")


class ConsoleLogoutView(LogoutView):
    """Log out on POST and return to the login form."""

    next_page = reverse_lazy("console:login")
