"""What every app's web pages share: who may see a page, how a page or its live fragment
is rendered, and how often a live fragment re-fetches itself when the websocket is quiet.

Each page renders whole, or only its live fragment when htmx asks for it (``request.htmx``,
set by django-htmx's middleware); the fragment is re-fetched when the websocket says
something changed (``static/js/live.js``) and every :func:`poll_seconds` as a fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from .models import Role
from .roles import has_role

View = Callable[..., HttpResponse]

NO_ROLE = "Your account has no role in Gearman HQ yet. Ask an admin for viewer access."
#: seconds between fallback refreshes of a live fragment; ``?poll=N`` picks another
POLL_DEFAULT = 10
POLL_MIN, POLL_MAX = 1, 300


class HtmxHttpRequest(HttpRequest):
    """A request that went through django-htmx's middleware (for type checkers)."""

    htmx: HtmxDetails


def viewer_required(view: View) -> View:
    """Signed in (else the login page) and at least a viewer (else 403)."""

    @wraps(view)
    def wrapped(request: HtmxHttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_authenticated:
            if request.htmx:  # a partial would swap the login form into the page
                return HttpResponseClientRedirect(f"/login/?next={request.path}")
            return redirect_to_login(request.get_full_path())
        if not has_role(request.user, Role.VIEWER):
            raise PermissionDenied(NO_ROLE)
        return view(request, *args, **kwargs)

    return wrapped


def role_required(role: Role, message: str) -> Callable[[View], View]:
    """Like :func:`viewer_required` (sign in first), then at least ``role`` (else 403
    with ``message``)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            if not has_role(request.user, role):
                raise PermissionDenied(message)
            return view(request, *args, **kwargs)

        return viewer_required(wrapped)

    return decorate


def poll_seconds(request: HttpRequest) -> int:
    raw = request.GET.get("poll", "")
    return min(max(int(raw), POLL_MIN), POLL_MAX) if raw.isdigit() else POLL_DEFAULT


def is_fragment(request: HtmxHttpRequest) -> bool:
    """htmx asks for the live fragment (a history restore wants the whole page)."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def render_page(request: HtmxHttpRequest, page: str, fragment: str, context: dict[str, Any],
                status: int = 200) -> HttpResponse:
    """The whole page, or only its live fragment for htmx. The context gains ``poll``
    and ``can_operate`` unless the view set them."""
    context.setdefault("poll", poll_seconds(request))
    context.setdefault("can_operate", has_role(request.user, Role.OPERATOR))
    template = fragment if is_fragment(request) else page
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response
