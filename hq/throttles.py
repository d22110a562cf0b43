"""Per-token rate limits for the REST API, so one script cannot starve everyone else.

Each API token (or, for the web UI's own API calls, each signed-in user) may make
``HQ_API_RATE`` requests per ``HQ_API_RATE_WINDOW_S`` seconds; past that the API answers 429
in the JSON error shape with ``Retry-After`` (seconds until the window ends). ``0`` turns
the limit off. Admins are exempt while ``HQ_API_RATE_ADMINS_EXEMPT`` is on.

A fixed window counted in Redis, so every web process shares the count. Each process
adds its requests to Redis in small batches (``INCRBY`` at most every ``SYNC_EVERY``
requests or ``SYNC_S`` seconds per requester) while the count is far from the limit, and on
every request once the next batch could cross it: the Redis round trip cost more CPU than a
find-by-handle itself (0.4-0.6 ms a request, measured in-process). So a limit is exact
within ``SYNC_EVERY`` requests per web process. DRF's ``SimpleRateThrottle`` keeps a list of
every request's time in the cache instead: at hundreds of requests a second that list is
the cost. Whether the requester is an admin is looked up only once they are over the
limit. Redis not answering lets the request through: a limit is no reason to refuse
service.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
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

#: requests a process may count before telling Redis, while far from the limit
SYNC_EVERY = 16
#: ... and seconds
SYNC_S = 0.25
#: requesters remembered per process before the old windows are forgotten
KEYS_MAX = 10_000


@dataclass
class _Count:
    slot: int
    shared: int = 0  # the window's count in Redis after this process's last INCRBY
    pending: int = 0  # counted here, not yet added to Redis
    synced_at: float = 0.0


_counts: dict[str, _Count] = {}
_lock = threading.Lock()


def _take(key: str, slot: int, limit: int, now: float) -> tuple[int, int]:
    """Count one request: (the count as this process knows it, how many to add to Redis
    now, 0 when this request may wait for a later batch)."""
    with _lock:
        count = _counts.get(key)
        if count is None or count.slot != slot:
            if len(_counts) >= KEYS_MAX:
                for old in [k for k, c in _counts.items() if c.slot != slot]:
                    del _counts[old]
            count = _counts[key] = _Count(slot)
        count.pending += 1
        known = count.shared + count.pending
        if (count.pending < SYNC_EVERY and now - count.synced_at < SYNC_S
                and known + SYNC_EVERY <= limit):
            return known, 0
        send, count.pending = count.pending, 0
        return known, send


def _synced(key: str, slot: int, shared: int, now: float) -> int:
    with _lock:
        count = _counts.get(key)
        if count is None or count.slot != slot:
            return shared
        count.shared, count.synced_at = shared, now
        return shared + count.pending


def _unsent(key: str, slot: int, n: int) -> None:
    with _lock:
        count = _counts.get(key)
        if count is not None and count.slot == slot:
            count.pending += n

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
        count, send = _take(key, slot, limit, now)
        if send:
            try:
                with client().pipeline(transaction=False) as pipe:
                    pipe.incrby(key, send)
                    pipe.expire(key, window + 1)
                    count = _synced(key, slot, int(pipe.execute()[0]), now)
            except redis.RedisError as exc:
                _unsent(key, slot, send)
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
