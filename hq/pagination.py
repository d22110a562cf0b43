"""Cursor pagination shared by every list endpoint (``{"next", "previous", "results"}``)."""

from rest_framework.pagination import CursorPagination


class NewestFirst(CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class OldestFirst(CursorPagination):
    ordering = ("at", "id")
    page_size = 200
    page_size_query_param = "limit"
    max_page_size = 1000
