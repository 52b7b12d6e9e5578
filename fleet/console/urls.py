"""URL map of the console (the page paths are fixed: outside checks rely on them)."""

from django.urls import path

from fleet.console.views import (
    audit,
    auth,
    dead_letters,
    devices,
    enrollment,
    gateways,
    models,
    overview,
    profiles,
    rollouts,
    signing,
    telemetry,
    users,
    versions,
)

app_name = "console"

urlpatterns = [
    path("login/", auth.ConsoleLoginView.as_view(), name="login"),
    path("logout/", auth.ConsoleLogoutView.as_view(), name="logout"),
    path("", overview.overview, name="overview"),
    path("devices/", devices.device_list, name="devices"),
    path("devices/<slug:uid>/", devices.device_detail, name="device-detail"),
    path("devices/<slug:uid>/edit/", devices.device_edit, name="device-edit"),
    path("devices/<slug:uid>/revoke/", devices.device_revoke, name="device-revoke"),
    path("enrollment/", enrollment.enrollment, name="enrollment"),
    path("enrollment/<int:pk>/revoke/", enrollment.token_revoke, name="token-revoke"),
    path("models/", models.model_list, name="models"),
    path("models/new/", models.model_create, name="model-create"),
    path("models/upload/", models.version_upload, name="version-upload"),
    path("models/versions/<int:pk>/", versions.version_detail, name="version-detail"),
    path("models/versions/<int:pk>/packages/", versions.package_build, name="package-build"),
    path("rollouts/", rollouts.rollouts, name="rollouts"),
    path("rollouts/new/", rollouts.rollout_create, name="rollout-create"),
    path("rollouts/<int:pk>/", rollouts.rollout_detail, name="rollout-detail"),
    path("rollouts/<int:pk>/<slug:verb>/", rollouts.rollout_control, name="rollout-control"),
    path("telemetry/", telemetry.telemetry, name="telemetry"),
    path("audit/", audit.audit, name="audit"),
    path("signing-keys/", signing.signing_keys, name="signing-keys"),
    path("signing-keys/rotate/", signing.signing_key_rotate, name="signing-key-rotate"),
    path("signing-keys/<str:kid>/retire/", signing.signing_key_retire,
         name="signing-key-retire"),
    path("hardware-profiles/", profiles.profile_list, name="profiles"),
    path("hardware-profiles/new/", profiles.profile_create, name="profile-create"),
    path("hardware-profiles/<slug:name>/", profiles.profile_detail, name="profile-detail"),
    path("gateways/", gateways.gateway_list, name="gateways"),
    path("gateways/<slug:uid>/", gateways.gateway_detail, name="gateway-detail"),
    path("gateways/<slug:uid>/revoke/", gateways.gateway_revoke, name="gateway-revoke"),
    path("dead-letters/", dead_letters.dead_letters, name="dead-letters"),
    path("users/", users.user_list, name="users"),
    path("users/<int:pk>/role/", users.user_role, name="user-role"),
    path("users/<int:pk>/active/", users.user_active, name="user-active"),
]
