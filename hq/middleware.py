"""Request checks in front of every view, and the net under them.

:class:`ServiceErrorsMiddleware` turns an exception a view lets out into an answer a
client can use instead of Django's HTML 500: a database that does not answer
(``hq.errors.db_unavailable``) is a 503 with ``Retry-After`` — the JSON error shape for the
API and for clients that ask for JSON, the standalone page ``templates/503.html`` for a
browser — and any other error under ``/api/`` is a JSON 500 (``server_error``), logged
with its traceback as Django would.

:class:`QueryGuardMiddleware` turns away what no view can serve: a NUL character in the
path or in a query value (Postgres refuses NUL in text, so it would otherwise surface as a
500 from whichever query used it first) and a query value longer than
:data:`QUERY_VALUE_MAX`. Views and selectors still check their own values; this is the net
under them. The answer is a 400: the JSON error shape under ``/api/``, a page elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string

from .errors import UNAVAILABLE, db_retry_after, db_unavailable, error_body

log = logging.getLogger("django.request")

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


def unavailable(request: HttpRequest) -> HttpResponse:
    """The 503 for a database that does not answer: JSON or the standalone page."""
    response: HttpResponse
    if wants_json(request):
        response = JsonResponse(error_body("unavailable", UNAVAILABLE), status=503)
    else:  # without the request: no context processor may touch the database
        response = HttpResponse(render_to_string("503.html", {"retry_after": db_retry_after()}),
                                status=503)
    response["Retry-After"] = db_retry_after()
    return response


class ServiceErrorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if db_unavailable(exc):
            log.warning("Database unavailable: %s %s: %s", request.method, request.path,
                        str(exc).strip()[:300])
            return unavailable(request)
        if request.path.startswith("/api/"):
            log.error("Internal Server Error: %s", request.path, exc_info=exc,
                      extra={"status_code": 500, "request": request})
            return JsonResponse(error_body("server_error", "Something broke on our side; "
                                           "the error was logged."), status=500)
        return None  # Django's own handling (the 500 page, or the debug page)
