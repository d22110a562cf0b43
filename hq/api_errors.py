"""JSON 404 for unknown API paths (instead of Django's HTML page).

CSRF-exempt: it changes nothing, and a script's PUT/PATCH/DELETE to a path the router does
not know must get this JSON 404, not Django's HTML 403 for a missing CSRF cookie.
"""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .errors import error_body


@csrf_exempt
def api_not_found(request: HttpRequest, rest: str) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No API endpoint at /api/{rest}."), status=404)
