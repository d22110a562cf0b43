"""Writes about users and tokens (used by the hq_token / hq_setup commands)."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.db import transaction

from .models import ApiToken, Role
from .roles import set_role


@transaction.atomic
def ensure_user(username: str, role: Role) -> AbstractUser:
    """The user named ``username`` with exactly ``role`` (created when missing)."""
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
    user.is_staff = role == Role.ADMIN
    user.is_superuser = role == Role.ADMIN
    user.save()
    set_role(user, role)
    return user


def issue_token(user: AbstractUser) -> str:
    return ApiToken.issue(user)[1]


def reset_password(user: AbstractUser) -> str:
    password = secrets.token_urlsafe(12)
    user.set_password(password)
    user.save(update_fields=["password"])
    return password
