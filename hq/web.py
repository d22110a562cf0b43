"""What every app's web pages share: who may see a page, how a page or its live fragment
is rendered, and how often a live fragment re-fetches itself when the websocket is quiet.

Each page renders whole, or only its live fragment when htmx asks for it (``request.htmx``,
set by django-htmx's middleware); the fragment is re-fetched when the websocket says
something changed (``static/js/live.js``) and every :func:`poll_seconds` as a fallback.

What a service refuses (an :class:`~hq.errors.HQError`) reaches a page one of three ways:
an action (a POST that redirects) flashes it and goes back (:func:`refusals_flashed`), a
form shows it on its fields (:func:`form_errors`), a lookup makes it a 404 (:func:`or_404`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from django import forms
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from .errors import HQError, NotFound
from .models import Role
from .roles import has_role

View = Callable[..., HttpResponse]
P = ParamSpec("P")
T = TypeVar("T")

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


def refusals_flashed(url_name: str, *, url_kwargs: tuple[str, ...] = (),
                     not_found_404: bool = False) -> Callable[[View], View]:
    """For an action view (a POST that redirects): an HQError it raises becomes an error
    message and a redirect to ``url_name``, reversed with the view's own URL arguments
    named in ``url_kwargs``. With ``not_found_404`` a NotFound is a 404 page instead."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            try:
                return view(request, *args, **kwargs)
            except HQError as exc:
                if not_found_404 and isinstance(exc, NotFound):
                    raise Http404(exc.message) from None
                messages.error(request, exc.message)
                back: dict[str, Any] = {name: kwargs[name] for name in url_kwargs}
                return redirect(url_name, **back)

        return wrapped

    return decorate


def form_errors(form: forms.BaseForm, exc: HQError) -> None:
    """Show a refused save on its form: the message above it, each field's own errors
    beside the fields the form has."""
    form.add_error(None, exc.message)
    for name, errors in (exc.fields or {}).items():
        if name in form.fields:
            for error in errors:
                form.add_error(name, error)


def or_404(service: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``service(...)``, its NotFound a 404 page."""
    try:
        return service(*args, **kwargs)
    except NotFound as exc:
        raise Http404(exc.message) from None
