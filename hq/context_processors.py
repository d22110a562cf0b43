"""Values every page's template needs."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def live_url(request: HttpRequest) -> dict[str, str]:
    """``HQ_LIVE_URL``: where static/js/live.js opens the live websocket."""
    return {"hq_live_url": str(getattr(settings, "HQ_LIVE_URL", ""))}
