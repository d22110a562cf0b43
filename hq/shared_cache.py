"""Values many clients ask for at once, computed once and shared by every web process.

:func:`shared` keeps a value in Redis (``REDIS_URL``, under the prefix of
``settings.CACHES``) for
``HQ_SHARED_CACHE_S`` seconds (capped at the poll interval, so a value is never older than
about one poll). When it runs out, one request — the one that wins a short Redis lock —
computes it again while the others keep answering with the previous value; with no previous
value the others wait for the winner (up to :data:`WAIT_S`) rather than all computing at
once. ``HQ_SHARED_CACHE_S=0`` (the default outside the web server) computes every time.

Redis not answering is never an error here: the value is then computed for this request.

It talks to Redis through one client per process (:func:`client`) rather than Django's
cache: the web server runs each request in a fresh context, where Django's cache object —
and so a new Redis connection — would be made again for every request (1.4 ms each).
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from django.conf import settings

log = logging.getLogger(__name__)

T = TypeVar("T")
#: how long a request with nothing to show waits for another one computing the value
WAIT_S = 5.0
#: a lock outlives a computation that died with its process by at most this
LOCK_S = 30


_lock = threading.Lock()
_client: tuple[int, str, redis.Redis] | None = None


def client() -> redis.Redis:
    """A Redis client per process (its connection pool is thread-safe), for ``REDIS_URL``;
    made again after a fork or a change of the setting."""
    global _client
    with _lock:
        if _client is None or _client[:2] != (os.getpid(), settings.REDIS_URL):
            _client = (os.getpid(), settings.REDIS_URL, redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1))
        return _client[2]


def redis_key(name: str) -> str:
    """``name`` under this installation's cache prefix (two HQs may share a Redis)."""
    return f"{settings.CACHES['default'].get('KEY_PREFIX', 'hq')}:{name}"


def _get(key: str) -> tuple[float, Any] | None:
    raw = client().get(key)
    return None if raw is None else pickle.loads(raw)  # type: ignore[arg-type]


def ttl_s() -> float:
    return max(float(getattr(settings, "HQ_SHARED_CACHE_S", 0)), 0.0)


def shared(key: str, compute: Callable[[], T]) -> T:
    """``compute()``'s value, at most ``HQ_SHARED_CACHE_S`` old, computed once for all."""
    ttl = ttl_s()
    if ttl <= 0:
        return compute()
    key = redis_key(f"shared:{key}")
    try:
        entry = _get(key)
        if entry is not None and entry[0] > time.time():
            return entry[1]
        if not client().set(f"{key}:lock", 1, nx=True, ex=LOCK_S):
            if entry is not None:
                return entry[1]  # stale while one computes
            waited = _wait_for(key)
            if waited is not None:
                return waited[1]
    except Exception as exc:  # Redis down: compute here, as if there were no cache
        log.warning("shared cache not used for %s: %s", key, exc)
        return compute()
    try:
        value = compute()
        _store(key, value, ttl)
        return value
    finally:
        _unlock(key)


def _wait_for(key: str) -> tuple[float, Any] | None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.02)
        entry = _get(key)
        if entry is not None:
            return entry
    return None


def _store(key: str, value: object, ttl: float) -> None:
    try:  # kept for a while past its freshness: served stale during the next computation
        client().set(key, pickle.dumps((time.time() + ttl, value)), ex=max(int(ttl * 10), 60))
    except Exception as exc:
        log.warning("shared cache not stored for %s: %s", key, exc)


def _unlock(key: str) -> None:
    try:
        client().delete(f"{key}:lock")
    except Exception as exc:
        log.warning("shared cache lock not released for %s: %s", key, exc)
