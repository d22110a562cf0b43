"""Content negotiation for the API: DRF's, with the common case answered at once.

Scripts send no ``Accept``, ``*/*`` or ``application/json``; for those DRF parses the header
and matches every renderer only to pick the first one (the JSON renderer on every API
view). That is answered without parsing; anything else (``?format=``, ``indent=``, another
type, a 406) goes through DRF as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

ANY = {"", "*/*"}


class PlainJSONFirst(DefaultContentNegotiation):
    def select_renderer(self, request: Request, renderers: Iterable[BaseRenderer],
                        format_suffix: str | None = None) -> tuple[BaseRenderer, Any]:
        accept = request.META.get("HTTP_ACCEPT", "").strip()
        renderers = list(renderers)
        if renderers and not format_suffix and "format" not in request.query_params:
            first = renderers[0]
            if accept in ANY or (accept == "application/json"
                                 and first.media_type == "application/json"):
                return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
