from rest_framework.routers import SimpleRouter

from ota.api import views
from ota.api.rollout_views import RolloutViewSet

router = SimpleRouter()
router.register("models", views.ModelViewSet)
router.register("model-versions", views.ModelVersionViewSet)
router.register("packages", views.PackageViewSet)
router.register("signing-keys", views.SigningKeyViewSet)
router.register("rollouts", RolloutViewSet)
router.register("revalidation-jobs", views.RevalidationJobViewSet)

urlpatterns = router.urls
