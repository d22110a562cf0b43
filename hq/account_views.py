"""The Tokens page (everyone: their own API tokens; an admin sees and revokes any) and the
Users page (admins: users, their roles and tokens; create, change role, deactivate).

Thin: reads from ``hq.selectors``, writes through ``hq.services``. A new token's secret and
a generated password are rendered into the response that created them, once: they never
go into a redirect, a message cookie or the session.
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.models import AbstractUser
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from . import selectors, services
from .errors import HQError
from .forms import RoleForm, TokenForm, UserForm
from .models import Role
from .roles import has_role
from .web import or_404, refusals_flashed, role_required, viewer_required

admin_required = role_required(Role.ADMIN, "Only admins may see and manage users.")


def _me(request: HttpRequest) -> AbstractUser:
    return cast(AbstractUser, request.user)


@require_http_methods(["GET", "POST"])
@viewer_required
def token_list(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST if request.method == "POST" else None)
    secret = token = None
    status = 200
    if form.is_bound:
        if form.is_valid():
            try:
                token, secret = services.create_token(user=_me(request),
                                                      name=form.cleaned_data["name"],
                                                      expires_at=form.expires_at())
                form = TokenForm()
            except HQError as exc:
                form.add_error(None, exc.message)
        status = 200 if secret else 400
    context = {"form": form, "secret": secret, "new_token": token,
               "tokens": list(selectors.tokens_visible_to(_me(request))[:500]),
               "is_admin": has_role(request.user, Role.ADMIN)}
    return _render_once(request, "hq/tokens.html", context, status, shows_secret=bool(secret))


@require_POST
@viewer_required
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = or_404(services.revoke_token, actor=_me(request), token_id=pk)
    messages.success(request, f"Token {token.prefix}… ({token.name or 'no name'}) of "
                              f"{token.user.get_username()} revoked.")
    return redirect("token-list")


@require_http_methods(["GET", "POST"])
@admin_required
def user_list(request: HttpRequest) -> HttpResponse:
    form = UserForm(request.POST if request.method == "POST" else None)
    created = password = None
    if form.is_bound and form.is_valid():
        try:
            created, password = services.create_user(
                username=form.cleaned_data["username"], role=Role(form.cleaned_data["role"]),
                password=form.cleaned_data["password"])
            form = UserForm()
        except HQError as exc:
            fields = exc.fields or {"": [exc.message]}
            for field, errors in fields.items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, error)
    context = {"form": form, "users": selectors.users_overview(), "created": created,
               "password": password if created and not form.is_bound else None,
               "roles": [r.value for r in Role], "me": request.user.pk}
    status = 400 if form.is_bound and form.errors else 200
    return _render_once(request, "hq/users.html", context, status, shows_secret=bool(password))


@require_POST
@admin_required
@refusals_flashed("user-list", not_found_404=True)
def user_role(request: HttpRequest, pk: int) -> HttpResponse:
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose viewer, operator or admin.")
        return redirect("user-list")
    user = services.change_role(actor=_me(request), user_id=pk,
                                role=Role(form.cleaned_data["role"]))
    messages.success(request, f"{user.get_username()} is now {form.cleaned_data['role']}.")
    return redirect("user-list")


@require_POST
@admin_required
@refusals_flashed("user-list", not_found_404=True)
def user_active(request: HttpRequest, pk: int) -> HttpResponse:
    active = request.POST.get("active") == "1"
    user = services.set_active(actor=_me(request), user_id=pk, active=active)
    state = "reactivated" if active else "deactivated: their sessions and tokens stop working"
    messages.success(request, f"{user.get_username()} {state}.")
    return redirect("user-list")


def _render_once(request: HttpRequest, template: str, context: dict[str, Any], status: int,
                 *, shows_secret: bool) -> HttpResponse:
    """A page; one that shows a secret (a new token, a new password) is never cached."""
    response = render(request, template, context, status=status)
    if shows_secret:
        add_never_cache_headers(response)
    return response
