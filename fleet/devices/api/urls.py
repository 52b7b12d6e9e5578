from rest_framework.routers import SimpleRouter

from fleet.devices.api import gateway_views, views

router = SimpleRouter()
router.register("hardware-profiles", views.HardwareProfileViewSet)
router.register("groups", views.DeviceGroupViewSet)
router.register("devices", views.DeviceViewSet)
router.register("enrollment-tokens", views.EnrollmentTokenViewSet)
router.register("enroll", views.EnrollViewSet, basename="enroll")
router.register("gateways", gateway_views.GatewayViewSet)

urlpatterns = router.urls
