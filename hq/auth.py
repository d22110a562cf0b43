"""``Authorization: Bearer <token>`` for the REST API (and ``?token=`` for websockets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.utils import timezone
from rest_framework import authentication, exceptions

from .models import ApiToken, hash_token

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from rest_framework.request import Request


def user_for_token(raw: str) -> User | None:
    """The active user a raw token belongs to, or None."""
    token = (
        ApiToken.objects.select_related("user").filter(digest=hash_token(raw.strip())).first()
    )
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "bearer"

    def authenticate(self, request: Request) -> tuple[User, None] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != self.keyword:
            return None
        if not raw.strip():
            raise exceptions.AuthenticationFailed("The Authorization header has no token.")
        user = user_for_token(raw)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API token.")
        return (user, None)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
