"""Per-token rate limits for the REST API, so one script cannot starve everyone else.

Each API token (or, for the web UI's own API calls, each signed-in user) may make
``HQ_API_RATE`` requests per ``HQ_API_RATE_WINDOW_S`` seconds; past that the API answers 429
in the JSON error shape with ``Retry-After`` (seconds until the window ends). ``0`` turns
the limit off. Admins are exempt while ``HQ_API_RATE_ADMINS_EXEMPT`` is on.

A fixed window counted in Redis (one ``INCR`` + ``EXPIRE`` round trip per request), so every
web process shares the count. DRF's ``SimpleRateThrottle`` keeps a list of every request's
time in the cache instead: at hundreds of requests a second that list is the cost. Whether
the requester is an admin is looked up only once they are over the limit. Redis not
answering lets the request through: a limit is no reason to refuse service.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import redis
from django.conf import settings
from rest_framework.throttling import BaseThrottle

from .models import Role, hash_token
from .roles import has_role
from .shared_cache import client, redis_key

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

log = logging.getLogger(__name__)

def requester_key(request: Request) -> str | None:
    """Who is counted: the bearer token (by its digest's start), else the signed-in user."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() == "bearer" and raw.strip():
        return "t:" + hash_token(raw.strip())[:24]
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"u:{user.pk}"
    return None


class TokenRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self.retry_after: float | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        limit = int(getattr(settings, "HQ_API_RATE", 0))
        window = max(int(getattr(settings, "HQ_API_RATE_WINDOW_S", 60)), 1)
        who = requester_key(request)
        if limit <= 0 or who is None:
            return True
        now = time.time()
        slot = int(now // window)
        key = redis_key(f"rate:{who}:{slot}")
        try:
            with client().pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, window + 1)
                count = int(pipe.execute()[0])
        except redis.RedisError as exc:
            log.warning("rate limit not checked (Redis: %s)", exc)
            return True
        if count <= limit:
            return True
        if getattr(settings, "HQ_API_RATE_ADMINS_EXEMPT", True) and has_role(
                request.user, Role.ADMIN):
            return True
        self.retry_after = (slot + 1) * window - now
        return False

    def wait(self) -> float | None:
        return self.retry_after
