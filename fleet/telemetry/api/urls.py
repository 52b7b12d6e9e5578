from rest_framework.routers import SimpleRouter

from fleet.telemetry.api import views

router = SimpleRouter()
router.register("telemetry", views.TelemetryViewSet, basename="telemetry")
router.register("dead-letters", views.DeadLetterViewSet)

urlpatterns = router.urls
