"""One error family for the whole app and the single place it becomes JSON.

Services raise :class:`HQError` subclasses; the DRF exception handler below turns those and
DRF's own errors into ``{"error": {"code", "message", "fields"?}}`` with a proper status.

A database that does not answer (:func:`db_unavailable`: the pool had no free connection
within ``HQ_DB_POOL_TIMEOUT_S``, Postgres refused a new client, is down or dropped the
connection) is a 503 ``unavailable`` with ``Retry-After: HQ_DB_RETRY_AFTER_S``; a request
over its rate limit a 429 ``rate_limited`` with ``Retry-After``. Outside DRF views the same
503 comes from ``hq.middleware.ServiceErrorsMiddleware``.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response


class HQError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class InvalidInput(HQError):
    code = "invalid"


class InvalidCursor(HQError):
    """A pagination cursor that was tampered with, or cut short."""

    code = "invalid_cursor"


class NotFound(HQError):
    code = "not_found"
    status = 404


class Conflict(HQError):
    code = "conflict"
    status = 409


class RateLimited(HQError):
    code = "rate_limited"
    status = 429


class Unavailable(HQError):
    code = "unavailable"
    status = 503


def error_body(code: str, message: str, fields: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


UNAVAILABLE = "The database is not answering (or every connection is busy): try again shortly."


def db_unavailable(exc: BaseException) -> bool:
    """A database error that says nothing about the request: try again later."""
    return isinstance(exc, OperationalError | InterfaceError)


def db_retry_after() -> str:
    return str(max(int(getattr(settings, "HQ_DB_RETRY_AFTER_S", 5)), 1))


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
