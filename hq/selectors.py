"""Reads about users and tokens (the Tokens and Users pages, ``/api/v1/tokens/``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Count, QuerySet

from .errors import NotFound
from .models import ApiToken, Role
from .roles import has_role


def tokens_visible_to(user: AbstractUser | AnonymousUser) -> QuerySet[ApiToken]:
    """An admin sees every token; anyone else their own. Newest first."""
    qs = ApiToken.objects.select_related("user").order_by("-id")
    if has_role(user, Role.ADMIN):
        return qs
    if user.pk is None:
        return qs.none()
    return qs.filter(user_id=user.pk)


def find_token(id_or_prefix: str) -> ApiToken:
    """One token by id or by prefix (``hq_AbC1234``); ambiguous or unknown → NotFound."""
    text = id_or_prefix.strip()
    if text.isdigit() and len(text) < 19:
        token = ApiToken.objects.select_related("user").filter(pk=int(text)).first()
        if token is not None:
            return token
    matches = list(ApiToken.objects.select_related("user").filter(prefix=text[:12])[:2])
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise NotFound(f"Several tokens start with {text!r}: revoke one by its id.")
    raise NotFound(f"No token with id or prefix {text!r}.")


@dataclass(frozen=True)
class UserRow:
    id: int
    username: str
    role: Role | None
    is_active: bool
    last_login: datetime | None
    date_joined: datetime
    tokens: int


def users_overview() -> list[UserRow]:
    """Every user with their role and how many tokens they hold (three queries)."""
    rows = []
    users = (get_user_model().objects.order_by("username").prefetch_related("groups")
             .annotate(token_count=Count("api_tokens")))
    for user in users:
        names = {g.name for g in user.groups.all()}
        role = Role.ADMIN if user.is_superuser else next(
            (r for r in (Role.ADMIN, Role.OPERATOR, Role.VIEWER) if r.value in names), None)
        rows.append(UserRow(user.pk, user.get_username(), role, user.is_active,
                            user.last_login, user.date_joined, user.token_count))
    return rows
