from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api

router = SimpleRouter()
router.register("tokens", api.TokenViewSet, basename="token")
urlpatterns = [*router.urls, path("audit/", api.AuditList.as_view(), name="api-audit")]
