"""At most ``HQ_LOGIN_ATTEMPTS`` failed sign-ins per client address and user name in
``HQ_LOGIN_WINDOW_S`` seconds; past that the login answers 429 until the window ends.

Counters live in Django's cache (Redis, ``CACHES`` in settings), so every web process
shares them. The window starts at the first failure (Redis ``INCR`` keeps the key's
expiry); a successful sign-in clears the counter. The address is ``REMOTE_ADDR``: behind a
proxy that is the proxy's, which still limits guessing one user's password. When Redis does
not answer, sign-in is not blocked (the dashboard stays usable in an incident) and a
warning is logged.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)


def _key(address: str, username: str) -> str:
    digest = hashlib.sha256(f"{address}\0{username.strip().casefold()}".encode()).hexdigest()
    return f"login-failures:{digest[:40]}"


def blocked(address: str, username: str) -> bool:
    """Whether this address has used up its failed attempts for this user name."""
    try:
        return int(cache.get(_key(address, username), 0)) >= settings.HQ_LOGIN_ATTEMPTS
    except Exception as exc:  # Redis down: do not lock everyone out
        log.warning("login attempt counter unavailable: %s", exc)
        return False


def failed(address: str, username: str) -> None:
    key = _key(address, username)
    try:
        if not cache.add(key, 1, timeout=settings.HQ_LOGIN_WINDOW_S):
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, timeout=settings.HQ_LOGIN_WINDOW_S)
    except Exception as exc:
        log.warning("failed login not counted: %s", exc)


def succeeded(address: str, username: str) -> None:
    try:
        cache.delete(_key(address, username))
    except Exception as exc:
        log.warning("login attempt counter not cleared: %s", exc)


def retry_after_s() -> int:
    return int(settings.HQ_LOGIN_WINDOW_S)
