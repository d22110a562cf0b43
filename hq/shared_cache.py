"""Values many clients ask for at once, computed once and shared by every web process.

:func:`shared` keeps a value in Django's cache (Redis, ``settings.CACHES``) for
``HQ_SHARED_CACHE_S`` seconds (capped at the poll interval, so a value is never older than
about one poll). When it runs out, one request — the one that wins a short Redis lock —
computes it again while the others keep answering with the previous value; with no previous
value the others wait for the winner (up to :data:`WAIT_S`) rather than all computing at
once. ``HQ_SHARED_CACHE_S=0`` (the default outside the web server) computes every time.

Redis not answering is never an error here: the value is then computed for this request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)

T = TypeVar("T")
#: how long a request with nothing to show waits for another one computing the value
WAIT_S = 5.0
#: a lock outlives a computation that died with its process by at most this
LOCK_S = 30


def ttl_s() -> float:
    return max(float(getattr(settings, "HQ_SHARED_CACHE_S", 0)), 0.0)


def shared(key: str, compute: Callable[[], T]) -> T:
    """``compute()``'s value, at most ``HQ_SHARED_CACHE_S`` old, computed once for all."""
    ttl = ttl_s()
    if ttl <= 0:
        return compute()
    key = f"shared:{key}"
    try:
        entry: tuple[float, Any] | None = cache.get(key)
        if entry is not None and entry[0] > time.time():
            return entry[1]
        if not cache.add(f"{key}:lock", 1, timeout=LOCK_S):
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
        entry: tuple[float, Any] | None = cache.get(key)
        if entry is not None:
            return entry
    return None


def _store(key: str, value: object, ttl: float) -> None:
    try:  # kept for a while past its freshness: served stale during the next computation
        cache.set(key, (time.time() + ttl, value), timeout=max(int(ttl * 10), 60))
    except Exception as exc:
        log.warning("shared cache not stored for %s: %s", key, exc)


def _unlock(key: str) -> None:
    try:
        cache.delete(f"{key}:lock")
    except Exception as exc:
        log.warning("shared cache lock not released for %s: %s", key, exc)
