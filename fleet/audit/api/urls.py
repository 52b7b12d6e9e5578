from rest_framework.routers import SimpleRouter

from fleet.audit.api.views import AuditLogViewSet

router = SimpleRouter()
router.register("audit-log", AuditLogViewSet)

urlpatterns = router.urls
