"""``Content-Security-Policy`` on every response: scripts, styles, fonts and images come from
HQ itself only (``static/``, the vendored htmx and uPlot, Swagger UI from
drf-spectacular-sidecar); no inline script or style, no ``eval``, no frames, no plugins.
The live websocket is HQ's own origin (``connect-src 'self'`` covers ws:/wss: there), or,
when ``HQ_LIVE_URL`` names another port (``:8001``, ``python -m hq.serve``) or origin
(``wss://live.example.com/ws/live/``), that one as well.

Pages keep to it: no ``<script>``/``<style>`` blocks or ``style=""`` attributes in
templates (bar widths are classes, ``static/css/hq.css``), htmx's own indicator style is
turned off in ``base.html`` and lives in hq.css. A response that sets its own policy keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse

POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


_HOSTNAME = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def live_sources(live_url: str, host: str) -> str:
    """What ``connect-src`` must allow besides 'self' for the page's websocket to
    ``live_url`` (``HQ_LIVE_URL``), the page having been asked for at ``host``."""
    if live_url.startswith(":") and live_url[1:].isdigit():
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not _HOSTNAME.fullmatch(name):
            return ""
        return f"ws://{name}{live_url} wss://{name}{live_url}"
    if live_url.startswith(("ws://", "wss://")):
        parts = urlsplit(live_url)
        if parts.netloc and re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", parts.netloc):
            return f"{parts.scheme}://{parts.netloc}"
    return ""


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.live_url = str(getattr(settings, "HQ_LIVE_URL", ""))

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            extra = live_sources(self.live_url, request.META.get("HTTP_HOST", "")) \
                if self.live_url else ""
            response["Content-Security-Policy"] = POLICY.replace(
                "connect-src 'self'", f"connect-src 'self' {extra}") if extra else POLICY
        return response
