"""``Authorization: Bearer <token>`` for the REST API (and ``?token=`` for websockets)."""

from __future__ import annotations

import time
from dataclasses import dataclass
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


@dataclass(slots=True)
class _Known:
    """A token recently checked: who it signs in, until when that answer is reused."""
    user: User
    until: float


#: a script's token is looked up once every this many seconds per web process, not at
#: every request: a token revoked, a user deactivated or a role changed elsewhere (another
#: process, the CLI) takes effect within this time; in this process, at once (signals)
TOKEN_CACHE_S = 2.0
#: at most this many tokens are remembered (all forgotten past it)
TOKEN_CACHE_MAX = 1000
_known: dict[str, _Known] = {}


def forget_tokens(*_args: object, **_kwargs: object) -> None:
    """Drop every remembered token (a token, user or role changed in this process)."""
    _known.clear()


def connect_forgetting() -> None:
    """Forget remembered tokens whenever tokens, users or their groups change."""
    from django.contrib.auth.models import User
    from django.db.models.signals import m2m_changed, post_delete, post_save

    for model in (ApiToken, User):
        post_save.connect(forget_tokens, sender=model, dispatch_uid=f"hq-forget-{model}")
        post_delete.connect(forget_tokens, sender=model,
                            dispatch_uid=f"hq-forget-del-{model}")
    m2m_changed.connect(forget_tokens, sender=User.groups.through,
                        dispatch_uid="hq-forget-groups")


def check_token(raw: str) -> User:
    """The active user ``raw`` belongs to; :class:`TokenRejected` saying why not.

    Records when the token was used, at most once a minute (one cheap UPDATE). A token
    that signed in is remembered for :data:`TOKEN_CACHE_S` (with its user's role, which
    ``hq.roles`` keeps on the user object), so a busy script costs no query for it."""
    raw = raw.strip()
    if not raw or len(raw) > 200:
        raise TokenRejected("Invalid or revoked API token.")
    digest = hash_token(raw)
    known = _known.get(digest)
    if known is not None and known.until > time.monotonic():
        return known.user
    token = ApiToken.objects.select_related("user").filter(digest=digest).first()
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
    if len(_known) >= TOKEN_CACHE_MAX:
        _known.clear()
    until = time.monotonic() + TOKEN_CACHE_S
    if token.expires_at is not None:  # never past the token's own expiry
        until = min(until, time.monotonic() + (token.expires_at - now).total_seconds())
    _known[digest] = _Known(token.user, until)
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
