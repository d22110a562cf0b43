from rest_framework.routers import SimpleRouter

from . import api

router = SimpleRouter()
router.register("alert-rules", api.RuleViewSet, basename="alert-rule")
router.register("alerts", api.AlertViewSet, basename="alert")
router.register("channels", api.ChannelViewSet, basename="channel")
urlpatterns = router.urls
