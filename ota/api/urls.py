from rest_framework.routers import SimpleRouter

from ota.api import views

router = SimpleRouter()
router.register("models", views.ModelViewSet)
router.register("model-versions", views.ModelVersionViewSet)
router.register("packages", views.PackageViewSet)
router.register("signing-keys", views.SigningKeyViewSet)

urlpatterns = router.urls
