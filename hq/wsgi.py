"""WSGI entry point: what ``python -m hq.serve`` runs for HTTP (granian's WSGI workers).

Django's WSGI handler, behind :class:`ForwardedFrom`: the client's address and scheme from
``X-Forwarded-For``/``X-Forwarded-Proto`` when, and only when, the request comes from a
proxy in ``HQ_FORWARDED_ALLOW_IPS`` (the sign-in rate limit counts per address; a script
could otherwise claim any address it likes). ``/ws/live/`` is not here: websockets are the
ASGI server's (hq/asgi.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
_django = get_wsgi_application()

from hq.security import require_secret_key  # noqa: E402

require_secret_key()  # the web server refuses a public SECRET_KEY

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
SCHEMES = {"http", "https"}


def trusted_proxies(raw: str) -> frozenset[str] | None:
    """``HQ_FORWARDED_ALLOW_IPS`` as a set of addresses; None: ``*``, every peer."""
    names = {part.strip() for part in raw.split(",") if part.strip()}
    return None if "*" in names else frozenset(names)


class ForwardedFrom:
    def __init__(self, app: WSGIApp, trusted: frozenset[str] | None) -> None:
        self.app, self.trusted = app, trusted

    def _trusts(self, address: str) -> bool:
        return self.trusted is None or address in self.trusted

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._trusts(environ.get("REMOTE_ADDR", "")):
            chain = environ.get("HTTP_X_FORWARDED_FOR", "")
            if chain:
                hops = [h.strip() for h in chain.split(",") if h.strip()]
                # the nearest hop that is not one of our proxies is the client
                client = next((h for h in reversed(hops) if not self._trusts(h)),
                              hops[0] if hops else "")
                if client and len(client) <= 64:
                    environ["REMOTE_ADDR"] = client
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
            if proto in SCHEMES:
                environ["wsgi.url_scheme"] = proto
        return self.app(environ, start_response)


application = ForwardedFrom(
    _django, trusted_proxies(os.environ.get("HQ_FORWARDED_ALLOW_IPS", "127.0.0.1")))
