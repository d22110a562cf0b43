from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from monitoring.metrics import metrics as metrics_view

from . import health, views
from .api_errors import api_not_found

api_v1 = [
    path("", include("jobs.api_urls")),
    path("", include("monitoring.api_urls")),
    path("", include("alerts.api_urls")),
    path("", include("hq.api_urls")),
]

# Everything needs a signed-in user (session) or an API token, except /healthz, /login/
# and, unless HQ_METRICS_TOKEN is set, /metrics (README "Security").
urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", views.api_docs, name="api-docs"),
    # any other path under /api/, newlines included (<path:> stops at one): a JSON 404
    re_path(r"^api/(?P<rest>(?s:.*))$", api_not_found),
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("", include("monitoring.web_urls")),
    path("", include("alerts.web_urls")),
    path("", include("jobs.web_urls")),
    path("", include("hq.web_urls")),
]
