from rest_framework.routers import SimpleRouter

from fleet.accounts.api.views import UserViewSet

router = SimpleRouter()
router.register("users", UserViewSet)

urlpatterns = router.urls
