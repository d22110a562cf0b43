"""ASGI entry point (``python -m hq.serve``, or ``daphne hq.asgi:application``): Django for
HTTP (static files through whitenoise), Channels for ``/ws/live/``.

HTTP requests run Django's WSGI handler on a fixed pool of ``HQ_WEB_THREADS`` threads
(a2wsgi): one hand-off from the event loop per request, threads that are reused, and so at
most that many database connections in use at once per process. Django's own ASGI handler
starts a thread per request and hops between the loop and threads up to three times in a
request whose middleware and views are synchronous, as all of HQ's are: measured, it cost
2-3 times the CPU of this path (README "Serving many clients").
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
get_asgi_application()  # sets Django up before consumers import models

from hq.security import require_secret_key  # noqa: E402

require_secret_key()  # the web server (hq.serve, daphne, runserver) refuses a public SECRET_KEY

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from monitoring.routing import origin_validator, websocket_urlpatterns  # noqa: E402

http_application = WSGIMiddleware(get_wsgi_application(),  # type: ignore[arg-type]
                                  workers=settings.HQ_WEB_THREADS)

application = ProtocolTypeRouter({
    "http": http_application,
    "websocket": origin_validator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})
