"""API errors as JSON: DRF's exception handler (``REST_FRAMEWORK["EXCEPTION_HANDLER"]``)
and the 404 for unknown API paths (instead of Django's HTML page).

The handler turns :class:`~hq.errors.HQError` and DRF's own errors into
``{"error": {"code", "message", "fields"?}}`` with a proper status; a database that does
not answer is a 503 with ``Retry-After``, a request over its rate limit a 429. (It lives
here, not in ``hq/errors.py``, so that the taps and Celery, which raise the same errors,
never import the REST framework.)

The 404 view is CSRF-exempt: it changes nothing, and a script's PUT/PATCH/DELETE to a path
the router does not know must get this JSON 404, not Django's HTML 403 for a missing CSRF
cookie.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response

from .errors import UNAVAILABLE, HQError, db_retry_after, db_unavailable, error_body


@csrf_exempt
def api_not_found(request: HttpRequest, rest: str) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No API endpoint at /api/{rest}."), status=404)


def _flatten(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {
            str(k): [str(x) for x in (v if isinstance(v, list) else [v])]
            for k, v in detail.items()
        }
    items = detail if isinstance(detail, list) else [detail]
    return {"non_field_errors": [str(x) for x in items]}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, HQError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
    if db_unavailable(exc):
        return Response(error_body("unavailable", UNAVAILABLE), status=503,
                        headers={"Retry-After": db_retry_after()})
    if isinstance(exc, exceptions.Throttled):
        wait = max(math.ceil(getattr(exc, "wait", None) or 1), 1)
        return Response(error_body("rate_limited", f"Too many requests: try again in {wait} s."),
                        status=429, headers={"Retry-After": str(wait)})
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, DjangoValidationError | DataError):
        # a value a view passed on unchecked (the checks belong in the selectors; this is
        # the net under them): still the client's mistake, never a 500
        return Response(error_body("invalid", "A value in the request is not valid here."),
                        status=400)
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()))
        message = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
        return Response(error_body("invalid", message, fields), status=400)
    if isinstance(exc, exceptions.APIException):
        headers = {}
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
            code, status_code = "unauthenticated", 401
        else:
            code, status_code = str(exc.default_code), exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return Response(error_body(code, str(detail)), status=status_code, headers=headers)
    return None
