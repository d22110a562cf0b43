"""``Authorization: Bearer <token>`` for the REST API (and ``?token=`` for websockets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.utils import timezone
from rest_framework import authentication, exceptions

from .formatting import utc
from .models import ApiToken, hash_token

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from rest_framework.request import Request


class TokenRejected(Exception):
    """Why a presented token does not sign anyone in (the message is for the client)."""


def check_token(raw: str) -> User:
    """The active user ``raw`` belongs to; :class:`TokenRejected` saying why not.

    Records when the token was used, at most once a minute (one cheap UPDATE)."""
    raw = raw.strip()
    token = None
    if raw and len(raw) <= 200:
        token = ApiToken.objects.select_related("user").filter(digest=hash_token(raw)).first()
    if token is None:
        raise TokenRejected("Invalid or revoked API token.")
    now = timezone.now()
    if token.is_expired(now):
        raise TokenRejected(f"This API token ({token.prefix}…) expired at "
                            f"{utc(token.expires_at)}. Create a new one on the Tokens page "
                            "or with manage.py hq_token.")
    if not token.user.is_active:
        raise TokenRejected("The account this API token belongs to is deactivated.")
    if token.last_used_is_stale(now):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def user_for_token(raw: str) -> User | None:
    """The active user a raw token belongs to, or None."""
    try:
        return check_token(raw)
    except TokenRejected:
        return None


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
        try:
            return (check_token(raw), None)
        except TokenRejected as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
