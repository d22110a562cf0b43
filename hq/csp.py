"""``Content-Security-Policy`` on every response: scripts, styles, fonts and images come from
HQ itself only (``static/``, the vendored htmx and uPlot, Swagger UI from
drf-spectacular-sidecar); no inline script or style, no ``eval``, no frames, no plugins.
The live websocket is HQ's own origin (``connect-src 'self'`` covers ws:/wss: there).

Pages keep to it: no ``<script>``/``<style>`` blocks or ``style=""`` attributes in
templates (bar widths are classes, ``static/css/hq.css``), htmx's own indicator style is
turned off in ``base.html`` and lives in hq.css. A response that sets its own policy keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

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


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = POLICY
        return response
