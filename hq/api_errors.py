"""JSON 404 for unknown API paths (instead of Django's HTML page)."""

from django.http import HttpRequest, JsonResponse

from .errors import error_body


def api_not_found(request: HttpRequest, rest: str) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No API endpoint at /api/{rest}."), status=404)
