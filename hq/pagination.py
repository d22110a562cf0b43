"""Cursor pagination shared by every list endpoint (``{"next", "previous", "results"}``).

A cursor comes back from the client, so it is hostile like any other query value: one that
does not decode, or whose position is not a value of the ordering column (a tampered
``p=abc`` for an id, an impossible date), is a 400 ``invalid_cursor``, never a 404 or 500.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.views import APIView

from .errors import InvalidCursor

POSITION_MAX = 100
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")

_Model = TypeVar("_Model", bound=models.Model)
_Row = TypeVar("_Row")


class CheckedCursorPagination(CursorPagination):
    """DRF's cursor pagination with the cursor checked before it reaches the database."""

    _model: type[models.Model] | None = None

    def paginate_queryset(self, queryset: models.QuerySet[_Model, _Row] | Sequence[_Row],
                          request: Request, view: APIView | None = None) -> list[_Row] | None:
        self._model = getattr(queryset, "model", None)
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> Cursor | None:
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is not None and not _BASE64.fullmatch(encoded):
            # b64decode would drop the stray characters and read "%%%" as the first page
            raise InvalidCursor("The cursor is not one this API gave out.")
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise InvalidCursor("The cursor is not one this API gave out.") from None
        if cursor is not None and cursor.position is not None:
            self._check_position(str(cursor.position))  # a str, whatever the stubs say
        return cursor

    def _check_position(self, position: str) -> None:
        if len(position) > POSITION_MAX or "\0" in position:
            raise InvalidCursor("The cursor is not one this API gave out.")
        ordering = self.ordering if isinstance(self.ordering, list | tuple) else [self.ordering]
        name = str(ordering[0]).lstrip("-")
        if self._model is None:
            return
        try:
            field = self._model._meta.get_field(name)
        except FieldDoesNotExist:
            return
        if not isinstance(field, models.Field):
            return
        try:
            value = field.to_python(position)
            if isinstance(field, models.IntegerField) and not -(2**63) <= value < 2**63:
                raise ValidationError("out of range")
        except (ValidationError, TypeError, ValueError, OverflowError):
            raise InvalidCursor("The cursor's position is not valid.") from None


class NewestFirst(CheckedCursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class OldestFirst(CheckedCursorPagination):
    ordering = ("at", "id")
    page_size = 200
    page_size_query_param = "limit"
    max_page_size = 1000
