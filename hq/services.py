"""Writes about users and tokens: the hq_token / hq_setup commands, the Tokens and Users
pages and ``/api/v1/tokens/`` all call these (keyword-only arguments, HQError on refusal)."""

from __future__ import annotations

import secrets
from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .errors import Conflict, InvalidInput, NotFound
from .models import ApiToken, Role
from .roles import has_role, set_role

NAME_MAX = 100
USERNAME_MAX = 150


@transaction.atomic
def ensure_user(username: str, role: Role) -> AbstractUser:
    """The user named ``username`` with exactly ``role`` (created when missing)."""
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
    _apply_role(user, role)
    return user


def _apply_role(user: AbstractUser, role: Role) -> None:
    user.is_staff = role == Role.ADMIN
    user.is_superuser = role == Role.ADMIN
    user.save()
    set_role(user, role)


def issue_token(user: AbstractUser, *, name: str = "",
                expires_at: datetime | None = None) -> str:
    return create_token(user=user, name=name, expires_at=expires_at)[1]


def create_token(*, user: AbstractUser, name: str = "",
                 expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """A new token of ``user``: the row and the secret (shown once, never stored)."""
    name = _clean_text("name", name, NAME_MAX)
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("expires_at must be in the future",
                           fields={"expires_at": ["A time in the future (or none)."]})
    return ApiToken.issue(user, name=name, expires_at=expires_at)


def revoke_token(*, actor: AbstractUser, token_id: int) -> ApiToken:
    """Delete a token: any token for an admin, else only the actor's own (another's is
    "not found", as if it did not exist)."""
    token = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    if token is None or (token.user_id != actor.pk and not has_role(actor, Role.ADMIN)):
        raise NotFound(f"No token with id {token_id}.")
    token.delete()
    token.pk = token_id  # callers report what was revoked
    return token


def reset_password(user: AbstractUser) -> str:
    password = secrets.token_urlsafe(12)
    user.set_password(password)
    user.save(update_fields=["password"])
    return password


@transaction.atomic
def create_user(*, username: str, role: Role, password: str = "") -> tuple[AbstractUser, str]:
    """A new user with ``role``; ``password`` or a random one (returned, shown once)."""
    username = _clean_text("username", username, USERNAME_MAX)
    if not username:
        raise InvalidInput("username must not be empty", fields={"username": ["Required."]})
    User = get_user_model()
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict(f"A user named {username!r} exists already.",
                       fields={"username": ["Taken."]})
    user = User(username=username)
    password = password or secrets.token_urlsafe(12)
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise InvalidInput("; ".join(exc.messages), fields={"password": exc.messages}) from None
    user.set_password(password)
    _apply_role(user, role)
    return user, password


def change_role(*, actor: AbstractUser, user_id: int, role: Role) -> AbstractUser:
    user = _other_user(actor, user_id, "change your own role")
    _apply_role(user, role)
    return user


def set_active(*, actor: AbstractUser, user_id: int, active: bool) -> AbstractUser:
    """Deactivate a user (their sessions and tokens stop working at the next request) or
    reactivate one."""
    user = _other_user(actor, user_id, "deactivate yourself")
    user.is_active = active
    user.save(update_fields=["is_active"])
    return user


def _other_user(actor: AbstractUser, user_id: int, what: str) -> AbstractUser:
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        raise NotFound(f"No user with id {user_id}.")
    if user.pk == actor.pk:
        raise Conflict(f"You cannot {what}: ask another admin (so HQ always keeps one).")
    return user


def _clean_text(field: str, value: str, limit: int) -> str:
    value = (value or "").strip()
    if "\0" in value:
        raise InvalidInput(f"{field} must not contain NUL characters",
                           fields={field: ["No NUL characters."]})
    if len(value) > limit:
        raise InvalidInput(f"{field} is too long ({limit} characters at most)",
                           fields={field: [f"{limit} characters at most."]})
    return value
