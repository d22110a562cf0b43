"""Request checks in front of every view.

:class:`QueryGuardMiddleware` turns away what no view can serve: a NUL character in the
path or in a query value (Postgres refuses NUL in text, so it would otherwise surface as a
500 from whichever query used it first) and a query value longer than
:data:`QUERY_VALUE_MAX`. Views and selectors still check their own values; this is the net
under them. The answer is a 400: the JSON error shape under ``/api/``, a page elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .errors import error_body

QUERY_VALUE_MAX = 4096


def wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return request.path.startswith("/api/") or (
        "application/json" in accept and "text/html" not in accept)


def query_problem(request: HttpRequest) -> tuple[str, str] | None:
    """(field, message) for the first value no view should see, or None."""
    if "\0" in request.path:
        return "path", "The address contains a NUL character."
    for name, values in request.GET.lists():
        if "\0" in name:
            return "query", "A query parameter name contains a NUL character."
        for value in values:
            if "\0" in value:
                return name, f"{name} must not contain NUL characters."
            if len(value) > QUERY_VALUE_MAX:
                return name, f"{name} is too long ({QUERY_VALUE_MAX} characters at most)."
    return None


def bad_request(request: HttpRequest, field: str, message: str) -> HttpResponse:
    if wants_json(request):
        code = "invalid_cursor" if field == "cursor" else "invalid"
        return JsonResponse(error_body(code, message, {field: [message]}), status=400)
    return render(request, "hq/400.html", {"message": message}, status=400)


class QueryGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = query_problem(request)
        if problem is not None:
            return bad_request(request, *problem)
        return self.get_response(request)
