"""ASGI entry point (``daphne hq.asgi:application``): Django for HTTP (static files through
whitenoise), Channels for ``/ws/live/``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
django_application = get_asgi_application()  # sets Django up before consumers import models

from hq.security import require_secret_key  # noqa: E402

require_secret_key()  # the web server (daphne, runserver) refuses a public SECRET_KEY

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from monitoring.routing import origin_validator, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_application,
    "websocket": origin_validator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})
