"""One error family for the whole app and the single place it becomes JSON.

Services raise :class:`HQError` subclasses; the REST framework's exception handler
(``hq/api_errors.py``) turns those and DRF's own errors into
``{"error": {"code", "message", "fields"?}}`` with a proper status. This module imports no
REST framework: the taps and Celery use the family too.

A database that does not answer (:func:`db_unavailable`: the pool had no free connection
within ``HQ_DB_POOL_TIMEOUT_S``, Postgres refused a new client, is down or dropped the
connection) is a 503 ``unavailable`` with ``Retry-After: HQ_DB_RETRY_AFTER_S``; a request
over its rate limit a 429 ``rate_limited`` with ``Retry-After``. Outside DRF views the same
503 comes from ``hq.middleware.ServiceErrorsMiddleware``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError


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
