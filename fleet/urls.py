"""URL map: the REST API under /api/v1/, its schema and docs, Django's admin."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from fleet.core.login_throttle import ThrottledAdminAuthenticationForm
from fleet.metrics import metrics

# Unmatched paths under /api/ answer in the API's error shape (fleet.core.api.not_found).
handler404 = "fleet.core.api.not_found"

# The admin's login counts failed attempts per username and per client, as the console's does.
admin.site.login_form = ThrottledAdminAuthenticationForm

api_v1 = [
    path("", include("fleet.devices.api.urls")),
    path("", include("fleet.audit.api.urls")),
    path("", include("fleet.accounts.api.urls")),
    path("", include("ota.api.urls")),
    path("", include("fleet.telemetry.api.urls")),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    # The schema holds no fleet data; it is public so tools can read it before logging in.
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[AllowAny]),
        name="swagger-ui",
    ),
    path("admin/", admin.site.urls),
    path("metrics", metrics, name="metrics"),
    path("console/", include("fleet.console.urls")),
    path("", RedirectView.as_view(url="/console/", permanent=False)),
]
