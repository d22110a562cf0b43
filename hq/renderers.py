"""The API's JSON renderer: DRF's output, written by orjson.

The bytes a script sees from DRF's ``JSONRenderer`` (compact, UTF-8, times as DRF writes
them: ISO 8601 with ``Z`` for UTC, ``\\u2028``/``\\u2029`` escaped), several times faster on
the large lists; the one difference is a float's exponent (``1e-7``, not ``1e-07``). Times,
and anything else orjson does not write the way DRF does, go through DRF's own encoder; a
value orjson refuses (an integer past 64 bits), or a request for indented output
(``Accept: application/json; indent=4``), falls back to DRF's renderer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

_ENCODER = JSONEncoder()
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
_LINE_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def dumps(data: Any) -> bytes:
    """``data`` as DRF would write it, by orjson (:class:`orjson.JSONEncodeError` when
    orjson cannot)."""
    out = orjson.dumps(data, default=_ENCODER.default, option=_OPTIONS)
    for raw, escaped in _LINE_SEPARATORS:
        if raw in out:
            out = out.replace(raw, escaped)
    return out


class FastJSONRenderer(JSONRenderer):
    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: Mapping[str, Any] | None = None) -> bytes:
        if data is None:
            return b""
        if self.get_indent(accepted_media_type or "", renderer_context or {}) is None:
            try:
                return dumps(data)
            except orjson.JSONEncodeError:
                pass
        return super().render(data, accepted_media_type, renderer_context)
