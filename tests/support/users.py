"""People who sign in to HQ in tests: one password for all of them, a role each (or none)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser
    from rest_framework.test import APIClient

    from hq.models import Role

PASSWORD = "correct-horse-battery"


def make_user(username: str, role: Role | None, password: str = PASSWORD) -> AbstractUser:
    """A user who can sign in with ``password``: with ``role``, or with none at all when
    ``role`` is None."""
    from django.contrib.auth import get_user_model

    from hq.services import ensure_user

    if role is None:
        user = get_user_model().objects.create_user(username)
    else:
        user = ensure_user(username, role)
    user.set_password(password)
    user.save()
    return user


def api_client(user: AbstractUser) -> APIClient:
    """A REST client that sends a fresh bearer token of ``user``."""
    from rest_framework.test import APIClient

    from hq.services import issue_token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(user)}")
    return client
